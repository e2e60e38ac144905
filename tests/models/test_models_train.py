"""ERM trainer pieces: augmentation and optimiser choices."""

from __future__ import annotations

import pytest
import torch

from applefair.data.augment import apply_augmenter, parse_augment, sample_augmenter
from applefair.errors import InputError
from applefair.training.erm import TrainConfig, make_optimizer


def _pair():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 32, generator=g)
    y = torch.zeros(6, 1, 32, 32)
    y[:, :, 4:14, 6:20] = 1
    return x, y


def test_augmentation_is_seeded_and_keeps_ranges():
    x, y = _pair()
    ops = parse_augment("hflip,vflip,rotate,intensity")
    a = apply_augmenter(sample_augmenter(ops, seed=3), x, y)
    b = apply_augmenter(sample_augmenter(ops, seed=3), x, y)
    c = apply_augmenter(sample_augmenter(ops, seed=4), x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], x)  # something happened
    assert a[0].min() >= 0 and a[0].max() <= 1
    assert set(a[1].unique().tolist()) <= {0.0, 1.0}


def test_augment_and_optimizer_names_are_checked():
    assert parse_augment(True) == ("batch_hflip",) and parse_augment("none") == ()
    with pytest.raises(InputError, match="augmentation 'mixup'"):
        parse_augment("hflip,mixup")
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(params, TrainConfig(optimizer="sgd", lr=0.01)), torch.optim.SGD)
    with pytest.raises(InputError, match="key 'optimizer'.*'lamb'"):
        make_optimizer(params, TrainConfig(optimizer="lamb"))
    with pytest.raises(InputError, match="no trainable parameters"):
        make_optimizer([], TrainConfig())
