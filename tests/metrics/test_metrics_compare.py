"""Paired comparison (bootstrap CIs of changes, Wilcoxon per group) and aggregation across seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from applefair.errors import InputError
from applefair.metrics.compare import aggregate_comparisons, aggregate_seeds, format_mean_std, paired_comparison
from applefair.metrics.fairness import fairness_summary


def _before(seed: int = 0, n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = np.where(rng.random(n) < 0.3, "F", "M")
    dice = np.where(groups == "F", rng.beta(6, 3, n), rng.beta(9, 2, n))
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "group": groups, "dice": dice, "iou": dice / (2 - dice)})


def test_identical_models_change_nothing():
    a = _before()
    c = paired_comparison(a, a.sample(frac=1.0, random_state=1), ["F", "M"], resamples=200)
    for key, v in c["fairness"].items():
        assert v["diff"] == pytest.approx(0.0, abs=1e-12) and not v["excludes_zero"], key
        assert v["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert c["wilcoxon"]["F"]["dice"]["p_value"] == 1.0 and c["wilcoxon"]["F"]["dice"]["n_nonzero"] == 0


def test_raising_the_worst_group_closes_the_gap_significantly():
    a = _before()
    b = a.copy()
    f = b["group"] == "F"
    b.loc[f, "dice"] = np.minimum(1.0, b.loc[f, "dice"] + 0.05 + 0.01 * np.random.default_rng(2).random(f.sum()))
    b["iou"] = b["dice"] / (2 - b["dice"])
    c = paired_comparison(a, b, ["F", "M"], resamples=500, seed=3)
    gap = c["fairness"]["dice_delta"]
    ref_a = fairness_summary(a, "sex", ["F", "M"])
    ref_b = fairness_summary(b, "sex", ["F", "M"])
    assert gap["before"] == pytest.approx(ref_a["fairness"]["dice_delta"])
    assert gap["after"] == pytest.approx(ref_b["fairness"]["dice_delta"])
    assert gap["diff"] < 0 and gap["excludes_zero"] and gap["ci"][1] < 0
    assert c["groups"]["M"]["dice"]["diff"] == 0.0 and not c["groups"]["M"]["dice"]["excludes_zero"]
    assert c["fairness"]["es_dice_sum"]["diff"] > 0 and c["fairness"]["es_dice_sum"]["excludes_zero"]
    # the paired interval is much narrower than the difference of two unpaired intervals suggests
    unpaired = fairness_summary(b, "sex", ["F", "M"], bootstrap=500)["ci"]["fairness"]["dice_delta"]
    assert gap["ci"][1] - gap["ci"][0] < 0.5 * (unpaired[1] - unpaired[0])
    w = c["wilcoxon"]["F"]["dice"]
    d = (b.loc[f, "dice"] - a.loc[f, "dice"]).to_numpy()
    assert w["p_value"] == pytest.approx(stats.wilcoxon(d[d != 0], method="approx").pvalue)
    assert w["p_value"] < 1e-6 and c["wilcoxon"]["M"]["dice"]["p_value"] == 1.0


def test_exact_wilcoxon_for_small_untied_groups():
    a = pd.DataFrame({"id": list("abcdef"), "group": list("AAABBB"), "dice": [0.5] * 6})
    b = a.assign(dice=[0.6, 0.53, 0.41, 0.5, 0.5, 0.5])
    w = paired_comparison(a, b, ["A", "B"], resamples=0)["wilcoxon"]["A"]["dice"]
    assert w["method"] == "exact"
    assert w["p_value"] == pytest.approx(stats.wilcoxon([0.1, 0.03, -0.09], method="exact").pvalue)


def test_misaligned_tables_are_input_errors():
    a = _before(n=10)
    with pytest.raises(InputError, match="different samples"):
        paired_comparison(a, a.iloc[1:], ["F", "M"])
    flipped = a.assign(group=np.where(a["group"] == "F", "M", "F"))
    with pytest.raises(InputError, match="has group"):
        paired_comparison(a, flipped, ["F", "M"])


def test_aggregate_seeds_mean_std():
    runs = [fairness_summary(_before(seed=s), "sex", ["F", "M"], bootstrap=20, seed=s) for s in range(3)]
    agg = aggregate_seeds(runs)
    vals = [r["overall"]["dice"] for r in runs]
    assert agg["overall"]["dice"]["mean"] == pytest.approx(np.mean(vals))
    assert agg["overall"]["dice"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert agg["overall"]["dice"]["n"] == 3
    assert "ci" not in agg and "attribute" not in agg


def test_aggregate_comparisons_marks_only_consistent_changes():
    comps = []
    for s in range(3):
        a = _before(seed=s)
        b = a.copy()
        f = b["group"] == "F"
        b.loc[f, "dice"] = b.loc[f, "dice"] + 0.04  # same direction every seed
        b.loc[~f, "dice"] = b.loc[~f, "dice"] + np.random.default_rng(s).normal(0, 0.003, (~f).sum())
        comps.append(paired_comparison(a, b, ["F", "M"], ["dice"], resamples=200, seed=s))
    agg = aggregate_comparisons(comps)
    f_dice = agg["groups"]["F"]["dice"]
    assert f_dice["mean_diff"] == pytest.approx(0.04) and f_dice["marker"] == "*" and f_dice["n_seeds"] == 3
    diffs = [c["groups"]["M"]["dice"]["diff"] for c in comps]
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert agg["groups"]["M"]["dice"]["t_ci"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half])
    assert agg["groups"]["M"]["dice"]["significant"] == (abs(np.mean(diffs)) > half)
    one = aggregate_comparisons(comps[:1])["groups"]["F"]["dice"]
    assert one["significant"] == comps[0]["groups"]["F"]["dice"]["excludes_zero"]


def test_format_mean_std():
    assert format_mean_std(0.81234, 0.0101, "*") == "0.812 ± 0.010*"
    assert format_mean_std(0.5, math.nan) == "0.500"
