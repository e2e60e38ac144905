"""3-D metrics in mm: Dice, HD95 and NSD of volumes with a voxel spacing (one per sample), under every metric
convention, and the evaluation path passing each sample's own spacing."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from applefair.data import GroupSpec, SegmentationDataset, load_dataset
from applefair.metrics.conventions import CONVENTIONS
from applefair.metrics.evaluate import score
from applefair.metrics.segmentation import per_sample_metrics

METRICS = ("dice", "iou", "hd95", "nsd")


def _ball(shape=(20, 20, 20), centre=(10, 10, 10), r=5.0) -> torch.Tensor:
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return torch.from_numpy(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r).float()


def _pair(shift=(2, 0, 0)):
    truth = _ball()
    pred = _ball(centre=tuple(10 + s for s in shift))
    return pred[None, None], truth[None, None]


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_distances_scale_with_the_spacing_and_dice_does_not(convention):
    pred, truth = _pair()
    vox = per_sample_metrics(pred, truth, metrics=METRICS, convention=convention)
    mm = per_sample_metrics(pred, truth, metrics=("dice", "iou", "hd95"), spacing=0.5, convention=convention)
    assert vox["hd95"].item() > 0 and mm["hd95"].item() == pytest.approx(0.5 * vox["hd95"].item())
    assert mm["dice"].item() == vox["dice"].item() and mm["iou"].item() == vox["iou"].item()
    tol = CONVENTIONS[convention].nsd_tolerance  # NSD's tolerance is in the spacing's units: half the voxels
    assert per_sample_metrics(pred, truth, metrics=("nsd",), spacing=0.5, nsd_tolerance=tol / 2,
                              convention=convention)["nsd"].item() == pytest.approx(vox["nsd"].item())


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_each_sample_is_measured_with_its_own_spacing(convention):
    along_d, _ = _pair((2, 0, 0))
    along_w, truth = _pair((0, 0, 2))
    pred = torch.cat([along_d, along_w, along_d])
    target = truth.repeat(3, 1, 1, 1, 1)
    spacing = torch.tensor([[3.0, 1.0, 1.0], [1.0, 1.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out = per_sample_metrics(pred, target, metrics=("hd95", "nsd"), spacing=spacing, convention=convention)
    # a shift along the thick axis is the same physical shift as along a thick in-plane axis
    assert out["hd95"][0].item() == pytest.approx(out["hd95"][1].item())
    assert out["hd95"][0].item() > 1.5 * out["hd95"][2].item()  # 3-mm voxels along the shift: farther apart
    assert out["nsd"][0].item() == pytest.approx(out["nsd"][1].item())
    one = per_sample_metrics(along_d, truth, metrics=("hd95",), spacing=[3.0, 1.0, 1.0], convention=convention)
    assert one["hd95"].item() == pytest.approx(out["hd95"][0].item())  # a row per sample = one per axis


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_a_missed_lesion_scores_by_the_convention_in_mm(convention):
    truth = _ball()[None, None].repeat(2, 1, 1, 1, 1)
    empty = torch.zeros_like(truth)
    spacing = [[2.0, 1.0, 1.0], [1.0, 0.5, 0.5]]
    out = per_sample_metrics(empty, truth, metrics=METRICS, spacing=spacing, convention=convention)
    rule = CONVENTIONS[convention].empty["hd95"].pred_empty
    for row, sp in zip(out["hd95"].tolist(), spacing, strict=True):
        expected = math.sqrt(sum((20 * s) ** 2 for s in sp)) if rule == "diagonal" else float(rule)
        assert row == pytest.approx(expected, rel=1e-6)  # the diagonal of each volume, in its own mm
    assert out["dice"].tolist() == [0.0, 0.0]


def test_bad_spacing_is_refused():
    pred, truth = _pair()
    with pytest.raises(ValueError, match="spacing"):
        per_sample_metrics(pred, truth, metrics=("hd95",), spacing=[1.0, 1.0])
    with pytest.raises(ValueError, match="spacing"):
        per_sample_metrics(pred, truth, metrics=("hd95",), spacing=[[1.0, -1.0, 1.0]])


class _Threshold(nn.Module):
    """Logits that reproduce the image as the prediction (the image holds the predicted mask)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        return (x - 0.5) * self.scale


def test_score_measures_each_volume_with_its_own_spacing(tmp_path):
    pred, truth = _pair((2, 0, 0))
    rows = []
    for i, sp in enumerate((1.0, 2.0, 0.5)):
        for folder, arr in (("images", pred[0, 0].numpy() * 255), ("masks", truth[0, 0].numpy())):
            (tmp_path / folder).mkdir(exist_ok=True)
            img = nib.Nifti1Image(arr.astype(np.uint8), np.diag([sp, sp, sp, 1.0]))
            img.header.set_zooms((sp, sp, sp))
            nib.save(img, tmp_path / folder / f"v{i}.nii.gz")
        rows.append({"image": f"images/v{i}.nii.gz", "mask": f"masks/v{i}.nii.gz", "split": "test",
                     "sex": "FM"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    frame = load_dataset(tmp_path)
    groups = GroupSpec("sex").fit(frame)
    scored = score(_Threshold(), SegmentationDataset(frame, groups, "test"), groups, metrics=METRICS, batch_size=2)
    hd = scored.per_sample["hd95"].to_numpy()
    assert hd[0] > 0 and hd[1] == pytest.approx(2 * hd[0]) and hd[2] == pytest.approx(0.5 * hd[0])
    assert scored.per_sample["dice"].nunique() == 1  # overlap does not depend on the spacing
