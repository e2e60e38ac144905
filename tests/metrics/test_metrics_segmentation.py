"""Per-sample metrics: hand-computed values, the empty-mask convention, multi-class, and a NumPy cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from applefair.metrics.segmentation import per_sample_metrics

ALL = ("dice", "iou", "hd95", "nsd")


def _square(size: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., r0:r1, c0:c1] = 1
    return m


def test_hand_computed_square_vs_wider_square():
    target = _square(16, 2, 6, 2, 6)  # 16 px
    pred = _square(16, 2, 6, 2, 7)  # 20 px, overlap 16
    m = per_sample_metrics(pred, target, metrics=ALL, nsd_tolerance=1.0)
    assert m["dice"].item() == pytest.approx(2 * 16 / (16 + 20))
    assert m["iou"].item() == pytest.approx(16 / 20)
    # every boundary point is within one pixel of the other boundary
    assert m["hd95"].item() == pytest.approx(1.0)
    assert m["nsd"].item() == pytest.approx(1.0)


def test_hd95_of_a_shifted_square_is_the_shift():
    target = _square(32, 4, 12, 4, 12)
    pred = _square(32, 4, 12, 7, 15)  # shifted 3 px to the right
    m = per_sample_metrics(pred, target, metrics=("hd95", "nsd"), nsd_tolerance=1.0)
    assert m["hd95"].item() == pytest.approx(3.0)
    assert 0.0 < m["nsd"].item() < 1.0
    spaced = per_sample_metrics(pred, target, metrics=("hd95",), spacing=0.5)
    assert spaced["hd95"].item() == pytest.approx(1.5)


def test_empty_mask_convention():
    empty = torch.zeros(1, 1, 8, 6)
    full = empty.clone()
    full[..., 2:4, 2:4] = 1
    both = per_sample_metrics(empty, empty, metrics=ALL)
    assert [both[k].item() for k in ALL] == [1.0, 1.0, 0.0, 1.0]
    diag = math.hypot(8, 6)
    for pred, target in ((full, empty), (empty, full)):
        one = per_sample_metrics(pred, target, metrics=ALL)
        assert [one[k].item() for k in ("dice", "iou", "nsd")] == [0.0, 0.0, 0.0]
        assert one["hd95"].item() == pytest.approx(diag)


def test_probabilities_are_thresholded():
    target = _square(8, 2, 6, 2, 6)
    probs = target * 0.9 + 0.05  # 0.95 inside, 0.05 outside
    assert per_sample_metrics(probs, target)["dice"].item() == pytest.approx(1.0)


def test_multiclass_per_class_columns_and_mean():
    labels = torch.zeros(1, 1, 16, 16)
    labels[..., 2:10, 2:10] = 1
    labels[..., 4:8, 4:8] = 2  # class 2 inside class 1
    pred_labels = labels.clone()
    pred_labels[..., 4:8, 4:9] = 2  # class 2 one column too wide (steals 4 px of class 1)
    scores = torch.nn.functional.one_hot(pred_labels[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    m = per_sample_metrics(scores, labels, metrics=("dice", "iou"), class_names=["disc", "cup"])
    d_cup = 2 * 16 / (16 + 20)
    d_disc = 2 * 44 / (48 + 44)  # truth 64 - 16 = 48 px, prediction 48 - 4 = 44 px, all inside the truth
    assert m["dice_cup"].item() == pytest.approx(d_cup)
    assert m["dice_disc"].item() == pytest.approx(d_disc)
    assert m["dice"].item() == pytest.approx((d_cup + d_disc) / 2)
    assert m["iou_cup"].item() == pytest.approx(16 / 20)


def test_dice_iou_match_numpy_on_random_masks():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 1, 20, 20)) > 0.6
    target = rng.random((6, 1, 20, 20)) > 0.5
    m = per_sample_metrics(torch.from_numpy(pred).float(), torch.from_numpy(target).float(), metrics=ALL)
    inter = (pred & target).sum(axis=(1, 2, 3))
    dice = 2 * inter / (pred.sum(axis=(1, 2, 3)) + target.sum(axis=(1, 2, 3)))
    iou = inter / (pred | target).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(m["dice"].numpy(), dice, rtol=1e-5)
    np.testing.assert_allclose(m["iou"].numpy(), iou, rtol=1e-5)
    assert torch.isfinite(m["hd95"]).all() and ((m["nsd"] >= 0) & (m["nsd"] <= 1)).all()


def test_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="unknown metric"):
        per_sample_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), metrics=("assd",))
