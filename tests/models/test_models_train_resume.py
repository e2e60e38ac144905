"""ERM trainer checkpoints: resuming from any epoch's checkpoint ends where the uninterrupted run ends."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import applefair.training.erm as train_mod
from applefair.errors import InputError
from applefair.models.registry import create_segmentor
from applefair.training.erm import TrainConfig, train_segmentor


@pytest.fixture(scope="module")
def splits(tiny_frame):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec("sex").fit(tiny_frame)
    return {s: SegmentationDataset(tiny_frame, groups, s) for s in ("train", "val")}, groups


def _net():
    net, _ = create_segmentor("unet", tiny=True, seed=2, channels=[4, 8, 16, 16])
    return net


@pytest.mark.parametrize("optimizer, augment", [("sgd", "vflip,rotate,intensity"), ("adamw", True)])
def test_resume_from_epoch_one_matches_the_uninterrupted_run(splits, tmp_path, monkeypatch, optimizer, augment):
    (split, groups) = splits
    cfg = TrainConfig(epochs=3, batch_size=8, seed=4, optimizer=optimizer, lr=0.01, augment=augment)
    save = train_mod.save_state

    def save_and_keep_epoch_one(path, **kw):
        save(path, **kw)
        if kw["meta"]["epoch"] == 1:
            shutil.copy(path, tmp_path / "epoch1.safetensors")

    monkeypatch.setattr(train_mod, "save_state", save_and_keep_epoch_one)
    ref, ref_hist = train_segmentor(_net(), split["train"], split["val"], groups, cfg, quiet=True,
                                    run_dir=tmp_path / "a", run_key={"data": "x"})
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "epoch1.safetensors", tmp_path / "b" / "checkpoint.safetensors")
    again, hist = train_segmentor(_net(), split["train"], split["val"], groups, cfg, quiet=True,
                                  run_dir=tmp_path / "b", resume=True, run_key={"data": "x"})
    assert hist == ref_hist and [h["epoch"] for h in hist] == [1, 2, 3]
    a, b = ref.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="data='x', this one 'y'"):
        train_segmentor(_net(), split["train"], split["val"], groups, cfg, quiet=True, run_dir=tmp_path / "b",
                        resume=True, run_key={"data": "y"})
