"""Metric conventions: each peer's rules on small masks scored on paper, the default left unchanged,
the missing-group rule, and the convention recorded in metrics.json.

Every reference value below is worked out by hand from the peer's formula (the arithmetic is in the
comments); medpy, where installed, is an extra cross-check of the pooled HD95, never the only one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from applefair.errors import InputError
from applefair.metrics.compare import aggregate_seeds, paired_comparison
from applefair.metrics.conventions import CONVENTIONS, Convention, EmptyRule, get_convention
from applefair.metrics.fairness import Aggregator, fairness_summary
from applefair.metrics.segmentation import per_sample_metrics

ALL = ("dice", "iou", "hd95", "nsd")
NAN = math.nan


def _mask(size: int, *boxes: tuple[int, int, int, int]) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    for r0, r1, c0, c1 in boxes:
        m[..., r0:r1, c0:c1] = 1
    return m


def _scores(pred, target, convention, **kw) -> list[float]:
    m = per_sample_metrics(pred, target, metrics=ALL, convention=convention, **kw)
    return [m[k].item() for k in ALL]


def _same(got: list[float], want: list[float]) -> bool:
    return all((math.isnan(w) and math.isnan(g)) or g == pytest.approx(w) for g, w in zip(got, want, strict=True))


# ---------------------------------------------------------------- empty masks, per convention

EMPTY = torch.zeros(1, 1, 8, 8)
SQUARE = _mask(8, (2, 4, 2, 4))  # 4 px
DIAG = math.hypot(8, 8)  # the largest distance an 8 x 8 image allows

# (dice, iou, hd95, nsd) for: both empty, prediction empty only, truth empty only
EXPECTED_EMPTY = {
    # applefair: a correct "nothing there" scores best, a miss or a false alarm worst
    "applefair": {"both": [1, 1, 0, 1], "pred": [0, 0, DIAG, 0], "truth": [0, 0, DIAG, 0]},
    # FairSeg calculate_metric_percase: pred>0 & gt>0 -> medpy; pred>0 & gt==0 -> (dice 1, hd95 0, jc 1);
    # otherwise (prediction empty) -> (0, 0, 0). NSD: MONAI surface Dice, NaN for two empty masks, 0 for one.
    "fairseg": {"both": [0, 0, 0, NAN], "pred": [0, 0, 0, 0], "truth": [1, 1, 0, 0]},
    # FairMedFM: torchmetrics Dice 2TP / (2TP + FP + FN), 0/0 -> 0 (IoU alike); HD95 and NSD as applefair
    "fairmedfm": {"both": [0, 0, 0, 1], "pred": [0, 0, DIAG, 0], "truth": [0, 0, DIAG, 0]},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_EMPTY))
def test_empty_masks_per_convention(name):
    want = EXPECTED_EMPTY[name]
    assert _same(_scores(EMPTY, EMPTY, name), want["both"])
    assert _same(_scores(EMPTY, SQUARE, name), want["pred"])
    assert _same(_scores(SQUARE, EMPTY, name), want["truth"])


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_non_empty_dice_and_iou_agree_across_conventions(name):
    target = _mask(16, (2, 6, 2, 6))  # 16 px
    pred = _mask(16, (2, 6, 2, 7))  # 20 px, all 16 of the truth inside
    m = per_sample_metrics(pred, target, metrics=("dice", "iou"), convention=name)
    assert m["dice"].item() == pytest.approx(2 * 16 / 36)
    assert m["iou"].item() == pytest.approx(16 / 20)


def test_multiclass_empty_class_follows_the_convention():
    # class 1 = a 4 x 4 square predicted exactly; class 2 absent from truth and prediction
    labels = torch.zeros(1, 1, 8, 8)
    labels[..., 2:6, 2:6] = 1
    scores = torch.nn.functional.one_hot(labels[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    a = per_sample_metrics(scores, labels, metrics=("dice",), class_names=["a", "b"])
    f = per_sample_metrics(scores, labels, metrics=("dice",), class_names=["a", "b"], convention="fairseg")
    assert (a["dice_a"].item(), a["dice_b"].item(), a["dice"].item()) == (1.0, 1.0, 1.0)
    assert (f["dice_a"].item(), f["dice_b"].item(), f["dice"].item()) == (1.0, 0.0, 0.5)


# ---------------------------------------------------------------- HD95 definition and NSD tolerance

def _spur_small() -> tuple[torch.Tensor, torch.Tensor]:
    """Truth: a 4 x 4 square (12 edge pixels). Prediction: the square plus a 1-px spur of 7 px from the
    middle of its right side. The spur's root pixel becomes interior, so the prediction's edge is
    11 square pixels (distance 0 to the truth's edge) + 7 spur pixels (distances 1..7); the truth's edge
    is 11 pixels at distance 0 + the root at distance 1."""
    target = _mask(16, (2, 6, 2, 6))
    pred = target.clone()
    pred[..., 4, 6:13] = 1
    return pred, target


def _spur_large() -> tuple[torch.Tensor, torch.Tensor]:
    """Truth: a 21 x 21 square (80 edge pixels); prediction: plus a 1-px spur of 12 px."""
    target = _mask(40, (2, 23, 2, 23))
    pred = target.clone()
    pred[..., 12, 23:35] = 1
    return pred, target


def test_hd95_thin_spur_max_directed_vs_pooled():
    pred, target = _spur_small()
    # max_directed: pred -> truth has 18 distances (11 zeros, 1..7); the 95th percentile sits at rank
    # 0.95 * 17 = 16.15 -> 6 + 0.15 * (7 - 6) = 6.15. truth -> pred (11 zeros, one 1): rank 10.45 -> 0.45.
    # The larger one: 6.15.
    # pooled: 30 distances (22 zeros, 1, 1, 2, ..., 7); rank 0.95 * 29 = 27.55 -> 5 + 0.55 = 5.55.
    for name, want in (("applefair", 6.15), ("fairmedfm", 6.15), ("fairseg", 5.55)):
        got = per_sample_metrics(pred, target, metrics=("hd95",), convention=name)["hd95"].item()
        assert got == pytest.approx(want, abs=1e-5), name
    # the same spur on a larger square: 79 zeros + 1..12 one way -> rank 85.5 -> 7.5;
    # pooled 158 zeros + 1, 1, 2, ..., 12 -> rank 161.5 -> 3.5
    pred, target = _spur_large()
    assert per_sample_metrics(pred, target, metrics=("hd95",))["hd95"].item() == pytest.approx(7.5, abs=1e-5)
    assert per_sample_metrics(pred, target, metrics=("hd95",), convention="fairseg")["hd95"].item() == \
        pytest.approx(3.5, abs=1e-5)


def test_pooled_hd95_honours_spacing():
    pred, target = _spur_small()
    got = per_sample_metrics(pred, target, metrics=("hd95",), spacing=0.5, convention="fairseg")["hd95"].item()
    assert got == pytest.approx(5.55 / 2, abs=1e-5)


def test_nsd_tolerance_2_vs_5_px():
    pred, target = _spur_small()
    # edge pixels within the tolerance: at 2 px, 11 + 2 of the prediction's 18 and all 12 of the truth's
    # -> 25 / 30; at 5 px, 11 + 5 and 12 -> 28 / 30
    at2, at5 = 25 / 30, 28 / 30
    nsd = {name: per_sample_metrics(pred, target, metrics=("nsd",), convention=name)["nsd"].item()
           for name in CONVENTIONS}
    assert nsd["applefair"] == pytest.approx(at2) and nsd["fairmedfm"] == pytest.approx(at2)
    assert nsd["fairseg"] == pytest.approx(at5)
    # an explicit tolerance overrides the convention's
    assert per_sample_metrics(pred, target, metrics=("nsd",), nsd_tolerance=5.0)["nsd"].item() == pytest.approx(at5)
    assert per_sample_metrics(pred, target, metrics=("nsd",), nsd_tolerance=2.0,
                              convention="fairseg")["nsd"].item() == pytest.approx(at2)


# ---------------------------------------------------------------- medpy cross-check (extra; skips without it)

def _fairseg_percase(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """FairSeg's per-case branches, written from their description, scored with medpy."""
    binary = pytest.importorskip("medpy.metric.binary")
    if pred.sum() > 0 and gt.sum() > 0:
        return binary.dc(pred, gt), binary.jc(pred, gt), binary.hd95(pred, gt)
    if pred.sum() > 0:
        return 1.0, 1.0, 0.0
    return 0.0, 0.0, 0.0


def test_fairseg_convention_matches_medpy_on_random_masks():
    pytest.importorskip("medpy")
    rng = np.random.default_rng(3)
    for i in range(12):
        gt = rng.random((20, 24)) > 0.7 if i % 4 else np.zeros((20, 24), bool)
        pred = rng.random((20, 24)) > 0.6 if i % 3 else np.zeros((20, 24), bool)
        m = per_sample_metrics(torch.from_numpy(pred).float()[None, None], torch.from_numpy(gt).float()[None, None],
                               metrics=("dice", "iou", "hd95"), convention="fairseg")
        dc, jc, hd = _fairseg_percase(pred, gt)
        assert (m["dice"].item(), m["iou"].item()) == pytest.approx((dc, jc), abs=1e-6)
        assert m["hd95"].item() == pytest.approx(hd, abs=1e-4)


def test_pooled_hd95_matches_medpy_with_anisotropic_spacing():
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(5)
    spacing = (2.0, 0.75)
    for _ in range(4):
        pred, gt = rng.random((2, 14, 18)) > 0.6
        got = per_sample_metrics(torch.from_numpy(pred).float()[None, None], torch.from_numpy(gt).float()[None, None],
                                 metrics=("hd95",), spacing=spacing, convention="fairseg")["hd95"].item()
        assert got == pytest.approx(binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-4)


# ---------------------------------------------------------------- the default is unchanged

def test_default_is_applefair_and_unchanged():
    assert get_convention() is get_convention("applefair") is CONVENTIONS["applefair"]
    pred, target = _spur_small()
    default = per_sample_metrics(pred, target, metrics=ALL)
    named = per_sample_metrics(pred, target, metrics=ALL, convention="applefair", nsd_tolerance=2.0)
    assert {k: v.item() for k, v in default.items()} == {k: v.item() for k, v in named.items()}
    assert _same(_scores(EMPTY, EMPTY, None), [1, 1, 0, 1])
    c = get_convention()
    assert (c.hd95, c.nsd_tolerance, c.missing_group) == ("max_directed", 2.0, "omit")


def test_unknown_convention_is_a_one_line_input_error():
    with pytest.raises(InputError, match="unknown metric convention 'medsam'; expected one of "
                                         "applefair, fairmedfm, fairseg") as err:
        get_convention("medsam")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError):
        per_sample_metrics(EMPTY, EMPTY, convention="nope")
    assert get_convention(" FairSeg ") is CONVENTIONS["fairseg"]


def test_a_convention_checks_its_rules():
    base = CONVENTIONS["applefair"]
    with pytest.raises(InputError, match="hd95"):
        Convention("x", base.empty, "mean", 2.0, "omit")
    with pytest.raises(InputError, match="missing_group"):
        Convention("x", base.empty, "pooled", 2.0, "drop")
    with pytest.raises(InputError, match="tolerance"):
        Convention("x", base.empty, "pooled", -1.0, "omit")
    with pytest.raises(InputError, match="exactly"):
        Convention("x", {"dice": base.empty["dice"]}, "pooled", 2.0, "omit")
    with pytest.raises(InputError, match="empty-mask rule"):
        EmptyRule(1.0, "worst", 0.0)
    with pytest.raises(TypeError):
        base.empty["dice"] = EmptyRule(0.0, 0.0, 0.0)  # registered rules are read-only
    custom = Convention("mine", base.empty, "pooled", 3.0, "nan")
    assert get_convention(custom) is custom
    assert base.with_nsd_tolerance(4.0).nsd_tolerance == 4.0 and base.with_nsd_tolerance(None) is base


# ---------------------------------------------------------------- missing groups

def _table() -> pd.DataFrame:
    return pd.DataFrame({"id": list("abcde"), "group": ["F", "F", "M", "M", "unknown"],
                         "dice": [0.6, 0.8, 0.9, 0.7, 0.5]})


def test_missing_group_omit_vs_nan():
    overall = 3.5 / 5  # 0.7, unknown included
    omit = fairness_summary(_table(), "sex", ["F", "M", "X"], ["dice"])
    f = omit["fairness"]
    assert omit["missing_groups"] == ["X"] and set(omit["groups"]) == {"F", "M"}
    # F = 0.7, M = 0.8: delta 0.1, population std 0.05, ES-Dice (sum) 0.7 / (1 + 0 + 0.1)
    assert f["dice_delta"] == pytest.approx(0.1) and f["dice_std"] == pytest.approx(0.05)
    assert f["es_dice_sum"] == pytest.approx(overall / 1.1) and f["es_dice_std"] == pytest.approx(overall / 1.05)
    assert f["dice_worst_group"] == "F"

    for name in ("fairseg", "fairmedfm"):
        s = fairness_summary(_table(), "sex", ["F", "M", "X"], ["dice"], convention=name)
        # FairSeg: sum_k |M - mean(group k)| with mean([]) = NaN -> ES-Dice NaN; FairMedFM: NaN group mean
        # makes delta, std and ES-Dice NaN. The groups present keep their means.
        assert s["groups"]["F"]["dice"] == pytest.approx(0.7) and s["groups"]["M"]["dice"] == pytest.approx(0.8)
        assert s["overall"]["dice"] == pytest.approx(overall) and s["missing_groups"] == ["X"]
        keys = ("dice_delta", "dice_skewness", "dice_std", "dice_worst", "es_dice_sum", "es_dice_std",
                "dice_delta_signed")
        assert all(math.isnan(s["fairness"][k]) for k in keys), name
        assert s["fairness"]["dice_worst_group"] is None

    # with every expected group present the rule changes nothing
    a = fairness_summary(_table(), "sex", ["F", "M"], ["dice"])
    b = fairness_summary(_table(), "sex", ["F", "M"], ["dice"], convention="fairseg")
    assert a["fairness"] == b["fairness"] and "missing_groups" not in a


def test_missing_group_nan_in_bootstrap_and_paired():
    s = fairness_summary(_table(), "sex", ["F", "M", "X"], ["dice"], bootstrap=50, convention="fairseg")
    assert all(math.isnan(v) for v in s["ci"]["fairness"]["es_dice_sum"])
    assert not math.isnan(s["ci"]["groups"]["F"]["dice"][0])
    after = _table().assign(dice=[0.7, 0.8, 0.9, 0.9, 0.5])
    p = paired_comparison(_table(), after, ["F", "M", "X"], ["dice"], resamples=20, convention="fairseg")
    assert math.isnan(p["fairness"]["dice_delta"]["diff"]) and p["convention"]["name"] == "fairseg"
    q = paired_comparison(_table(), after, ["F", "M", "X"], ["dice"], resamples=20)
    assert q["fairness"]["dice_delta"]["diff"] == pytest.approx(0.15 - 0.1)  # after: F 0.75, M 0.9
    with pytest.raises(ValueError, match="missing_group"):
        Aggregator(_table(), ["F"], ["dice"], missing_group="zero")


# ---------------------------------------------------------------- the convention in metrics.json

def test_summary_records_the_convention_as_strict_json():
    s = fairness_summary(_table(), "sex", ["F", "M"], ["dice"], convention="fairseg")
    c = json.loads(json.dumps(s["convention"], allow_nan=False))
    assert c["name"] == "fairseg" and c["hd95"] == "pooled" and c["nsd_tolerance"] == 5.0
    assert c["missing_group"] == "nan"
    assert c["empty_masks"]["dice"] == {"both_empty": 0.0, "pred_empty": 0.0, "truth_empty": 1.0}
    assert c["empty_masks"]["nsd"]["both_empty"] == "nan"
    assert "calculate_metric_percase" in c["source"]
    d = fairness_summary(_table(), "sex", ["F", "M"], ["dice"])["convention"]
    assert d["name"] == "applefair" and d["empty_masks"]["hd95"]["pred_empty"] == "diagonal"
    empty = fairness_summary(_table().iloc[:0], "sex", ["F", "M"], ["dice"], convention="fairmedfm")
    assert empty["convention"]["name"] == "fairmedfm" and empty["missing_groups"] == ["F", "M"]
    tol = fairness_summary(_table(), "sex", ["F"], ["dice"], convention=get_convention("fairseg").with_nsd_tolerance(3))
    assert tol["convention"]["nsd_tolerance"] == 3.0


def test_aggregate_seeds_keeps_one_convention_and_refuses_a_mix():
    runs = [fairness_summary(_table().assign(dice=_table()["dice"] + d), "sex", ["F", "M"], ["dice"])
            for d in (0.0, 0.1)]
    agg = aggregate_seeds(runs)
    assert agg["convention"]["name"] == "applefair" and agg["overall"]["dice"]["mean"] == pytest.approx(0.75)
    mixed = [runs[0], fairness_summary(_table(), "sex", ["F", "M"], ["dice"], convention="fairseg")]
    with pytest.raises(InputError, match="different metric conventions"):
        aggregate_seeds(mixed)
