"""Every method: same interface, caller's network untouched, a model that predicts via `segment`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from applefair.baselines import Budget, get_method, list_methods
from applefair.baselines.adversarial import grad_reverse
from applefair.baselines.groupdro import GroupDROLoss
from applefair.baselines.resampling import balanced_weights
from applefair.baselines.subgroup import GroupRoutedSegmentor
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.io import state_dict_hash
from applefair.errors import InputError
from applefair.models.forward import segment
from applefair.models.registry import create_segmentor

OPTIONS = {"apple": {"width": 4}, "faap": {"width": 4}}


@pytest.fixture(scope="module")
def setup(tiny_frame):
    groups = GroupSpec("sex").fit(tiny_frame)
    split = {s: SegmentationDataset(tiny_frame, groups, s) for s in ("train", "val", "test")}
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    return net.eval(), spec, groups, split


def test_registry_names_and_errors():
    assert list_methods() == ["erm", "resampling", "groupdro", "febs", "adversarial", "subgroup", "faap", "apple"]
    with pytest.raises(InputError, match="not known"):
        get_method("dro")
    with pytest.raises(InputError, match="unknown key 'etaa'"):
        get_method("groupdro").options({"etaa": 1})
    with pytest.raises(InputError, match="unknown key"):
        Budget.from_dict({"epoch": 3})


@pytest.mark.parametrize("name", ["erm", "resampling", "groupdro", "febs", "adversarial", "subgroup", "faap",
                                  "apple"])
def test_fit_leaves_input_untouched_and_predicts(setup, name):
    net, spec, groups, split = setup
    before = state_dict_hash(net)
    res = get_method(name).fit(net, spec, split["train"], split["val"], groups,
                               Budget(epochs=1, batch_size=8, augment=False), OPTIONS.get(name), quiet=True)
    assert state_dict_hash(net) == before
    assert res.trainable_params > 0 and res.seconds > 0
    assert len(res.history) == (2 * groups.num_groups if name == "subgroup" else 2)  # epoch 0 + 1 epoch
    batch = torch.utils.data.default_collate([split["test"][i] for i in range(4)])
    with torch.no_grad():
        out = segment(res.model, batch)
    assert out.shape == batch["mask"].shape and torch.isfinite(out).all()
    if name in ("faap", "apple"):  # frozen methods: the deployed weights inside are the deployed ones
        assert res.frozen and state_dict_hash(res.model.net) == before
        assert res.trainable_params < sum(p.numel() for p in res.model.parameters())
    else:
        assert not res.frozen


def test_balanced_weights_equalise_groups():
    ids = np.array([0] * 30 + [1] * 10 + [-1] * 10)
    w = balanced_weights(ids)
    assert np.isclose(w.sum(), 1.0)
    assert np.isclose(w[ids == 0].sum(), w[ids == 1].sum())
    assert np.isclose(w[ids == -1].sum(), 0.2)  # unknown samples keep their share of the data


def test_groupdro_upweights_the_worse_group():
    dro = GroupDROLoss(2, eta=0.5)
    losses = torch.tensor([0.1, 0.1, 0.9, 0.9, 0.5])
    groups = torch.tensor([0, 0, 1, 1, -1])
    for _ in range(5):
        loss = dro(losses, groups)
    assert dro.q[1] > dro.q[0]
    expected = float((dro.q.float() * torch.tensor([0.1, 0.9])).sum()) + 0.5 * 0.2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -1.0))


class _Const(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def test_router_sends_each_sample_to_its_group():
    routed = GroupRoutedSegmentor([_Const(0.0), _Const(1.0)], fallback=_Const(-1.0))
    batch = {"image": torch.zeros(4, 1, 8, 8), "group": torch.tensor([1, 0, -1, 1]), "index": torch.arange(4)}
    out = segment(routed, batch)
    assert out[:, 0, 0, 0].tolist() == [1.0, 0.0, -1.0, 1.0]
    with pytest.raises(TypeError, match="group"):
        routed(batch["image"])


def test_start_copy_keeps_architectural_freezing():
    from applefair.baselines.base import count_trainable, start_copy

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    net[0].weight.requires_grad_(False)  # e.g. a backbone kept frozen under LoRA
    twin = start_copy(net)
    assert not twin[0].weight.requires_grad and twin[1].weight.requires_grad
    assert count_trainable(twin) == 3 + 3 + 1
    for p in net.parameters():
        p.requires_grad_(False)  # frozen by the caller: retraining makes everything trainable
    assert count_trainable(start_copy(net)) == 16 and count_trainable(net) == 0
