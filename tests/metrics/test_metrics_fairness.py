"""Group aggregates: hand-computed values, independent re-implementations of the published formulas,
bootstrap CIs (reproducibility and coverage on a population with known truth) and the MetricFrame view."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from applefair.metrics.fairness import Aggregator, fairness_summary
from applefair.metrics.frame import MetricFrame


def _hand_table() -> pd.DataFrame:
    return pd.DataFrame({
        "id": list("abcdefg"),
        "group": ["F", "F", "M", "M", "M", "unknown", "X"],
        "dice": [0.6, 0.8, 0.9, 0.7, 0.8, 0.5, 1.0],
        "hd95": [4.0, 2.0, 1.0, 3.0, 2.0, 9.0, 0.0],
    })


def test_hand_computed_summary():
    m = fairness_summary(_hand_table(), "sex", ["F", "M"], metrics=["dice", "hd95"])
    assert m["overall"]["n"] == 7 and m["overall"]["n_unknown_group"] == 2
    assert m["overall"]["dice"] == pytest.approx(5.3 / 7)
    assert m["groups"]["F"] == pytest.approx({"n": 2, "dice": 0.7, "dice_std": np.std([0.6, 0.8], ddof=1),
                                              "hd95": 3.0, "hd95_std": np.std([4.0, 2.0], ddof=1)})
    assert m["groups"]["M"]["dice"] == pytest.approx(0.8)
    f = m["fairness"]
    overall = 5.3 / 7
    assert f["dice_delta"] == pytest.approx(0.1) and f["dice_delta_signed"] == pytest.approx(0.1)
    assert f["dice_worst"] == pytest.approx(0.7) and f["dice_worst_group"] == "F"
    assert f["dice_skewness"] == pytest.approx(0.3 / 0.2)
    assert f["dice_std"] == pytest.approx(0.05)
    assert f["es_dice_sum"] == pytest.approx(overall / (1 + abs(overall - 0.7) + abs(overall - 0.8)))
    assert f["es_dice_std"] == pytest.approx(overall / 1.05)
    # HD95: lower is better, so the worst group is the one with the largest mean
    assert f["hd95_worst"] == pytest.approx(3.0) and f["hd95_worst_group"] == "F"
    assert f["hd95_delta"] == pytest.approx(1.0)
    assert "es_hd95_sum" not in f and "hd95_skewness" not in f


def fairseg_es(per_sample: pd.DataFrame, groups: list[str], col: str) -> float:
    """Harvard-FairSeg: ES = M_all / (1 + sum_k |M_all - M_k|), written from the paper's formula."""
    m_all = per_sample[col].mean()
    total = 0.0
    for g in groups:
        vals = per_sample.loc[per_sample["group"] == g, col]
        if len(vals):
            total += abs(m_all - vals.mean())
    return m_all / (1 + total)


def fairmedfm(per_sample: pd.DataFrame, groups: list[str], col: str) -> dict[str, float]:
    """FairMedFM: population std of group means, ES = mean / (1 + std), skewness, delta."""
    means = [per_sample.loc[per_sample["group"] == g, col].mean() for g in groups]
    mu = sum(means) / len(means)
    std = (sum((x - mu) ** 2 for x in means) / len(means)) ** 0.5
    return {"std": std, "es": per_sample[col].mean() / (1 + std), "delta": max(means) - min(means),
            "skew": (1 - min(means)) / (1 - max(means))}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_published_formulas_on_random_inputs(k):
    rng = np.random.default_rng(k)
    names = [f"g{i}" for i in range(k)]
    for _ in range(20):
        n = int(rng.integers(3 * k, 60))
        frame = pd.DataFrame({"id": range(n), "group": [names[i % k] for i in rng.permutation(n)],
                              "dice": rng.beta(5, 2, n), "iou": rng.beta(3, 2, n)})
        frame.loc[rng.random(n) < 0.1, "group"] = "unknown"
        present = [g for g in names if (frame["group"] == g).any()]
        if len(present) < 2:
            continue
        m = fairness_summary(frame, "a", names)
        for col in ("dice", "iou"):
            ref = fairmedfm(frame, present, col)
            assert m["fairness"][f"es_{col}_sum"] == pytest.approx(fairseg_es(frame, present, col))
            assert m["fairness"][f"es_{col}_std"] == pytest.approx(ref["es"])
            assert m["fairness"][f"{col}_std"] == pytest.approx(ref["std"])
            assert m["fairness"][f"{col}_delta"] == pytest.approx(ref["delta"])
            assert m["fairness"][f"{col}_skewness"] == pytest.approx(ref["skew"])


def test_skewness_when_a_group_is_perfect():
    frame = pd.DataFrame({"id": range(4), "group": ["A", "A", "B", "B"], "dice": [1.0, 1.0, 0.5, 0.7]})
    assert fairness_summary(frame, "a", ["A", "B"])["fairness"]["dice_skewness"] == float("inf")
    frame["dice"] = 1.0
    assert fairness_summary(frame, "a", ["A", "B"])["fairness"]["dice_skewness"] == 1.0


def test_single_group_has_no_fairness_section():
    frame = pd.DataFrame({"id": range(3), "group": ["A", "A", "unknown"], "dice": [0.5, 0.6, 0.7]})
    m = fairness_summary(frame, "a", ["A", "B"], bootstrap=50)
    assert m["fairness"] == {} and list(m["groups"]) == ["A"]
    assert "fairness" not in m["ci"]


def test_empty_table():
    m = fairness_summary(pd.DataFrame({"id": [], "group": [], "dice": []}), "a", ["A", "B"], bootstrap=10)
    assert m["overall"]["n"] == 0 and np.isnan(m["overall"]["dice"]) and m["fairness"] == {}


def _population_sample(rng, n_a=60, n_b=40):
    a = rng.beta(8, 2, n_a)  # mean 0.8
    b = rng.beta(7, 3, n_b)  # mean 0.7
    return pd.DataFrame({"id": range(n_a + n_b), "group": ["A"] * n_a + ["B"] * n_b,
                         "dice": np.concatenate([a, b])})


def test_bootstrap_ci_is_reproducible_and_contains_the_estimate():
    frame = _population_sample(np.random.default_rng(1))
    m1 = fairness_summary(frame, "a", ["A", "B"], bootstrap=300, seed=7)
    m2 = fairness_summary(frame, "a", ["A", "B"], bootstrap=300, seed=7)
    m3 = fairness_summary(frame, "a", ["A", "B"], bootstrap=300, seed=8)
    assert m1["ci"] == m2["ci"] and m1["ci"] != m3["ci"]
    assert m1["ci"]["resamples"] == 300 and m1["ci"]["level"] == 0.95
    for section in ("overall", "fairness"):
        for key, (lo, hi) in m1["ci"][section].items():
            assert lo <= m1[section][key] <= hi, key
    lo90, hi90 = fairness_summary(frame, "a", ["A", "B"], bootstrap=300, seed=7, level=0.9)["ci"]["fairness"][
        "dice_delta"]
    lo95, hi95 = m1["ci"]["fairness"]["dice_delta"]
    assert lo95 <= lo90 and hi90 <= hi95


def test_bootstrap_ci_coverage_on_a_known_population():
    """95% CIs of a group mean, the gap and ES-Dice (sum form) cover the population value ~95% of the time."""
    mu_a, mu_b = 0.8, 0.7
    share_a = 0.6  # fixed by the stratified design (60 A, 40 B)
    mu = share_a * mu_a + (1 - share_a) * mu_b
    truth = {("groups", "A", "dice"): mu_a, ("fairness", "dice_delta"): mu_a - mu_b,
             ("fairness", "dice_delta_signed"): mu_a - mu_b,
             ("fairness", "es_dice_sum"): mu / (1 + abs(mu - mu_a) + abs(mu - mu_b))}
    rng = np.random.default_rng(123)
    reps, hits = 200, dict.fromkeys(truth, 0)
    for r in range(reps):
        agg = Aggregator(_population_sample(rng), ["A", "B"], ["dice"])
        samples = agg.resamples(400, seed=r)
        for key, value in truth.items():
            lo, hi = np.percentile(samples[key], [2.5, 97.5])
            hits[key] += int(lo <= value <= hi)
    for key, h in hits.items():
        assert 0.88 <= h / reps <= 0.99, (key, h / reps)


def test_group_metric_frame():
    frame = _hand_table()
    mf = MetricFrame(frame, ["F", "M", "X"], ["dice"], bootstrap=100)
    assert list(mf.by_group.index) == ["F", "M", "X"]
    assert mf.by_group.loc["X", "dice"] == pytest.approx(1.0)
    assert mf.difference()["dice"] == pytest.approx(0.3)
    assert mf.ratio()["dice"] == pytest.approx(0.7)
    assert mf.overall["dice"] == pytest.approx(5.3 / 7)
    assert mf.counts.to_dict() == {"F": 2, "M": 3, "X": 1}
    assert len(mf.ci["groups"]["F"]["dice"]) == 2


def test_signed_gap_ci_includes_zero_when_groups_are_equal():
    """delta's CI (a max - min) excludes zero by construction; delta_signed's does not."""
    rng = np.random.default_rng(5)
    reps, delta_zero, signed_zero = 60, 0, 0
    for r in range(reps):
        frame = pd.DataFrame({"id": range(100), "group": ["A"] * 60 + ["B"] * 40, "dice": rng.beta(8, 2, 100)})
        ci = fairness_summary(frame, "a", ["A", "B"], bootstrap=300, seed=r)["ci"]["fairness"]
        delta_zero += int(ci["dice_delta"][0] <= 0.0)
        signed_zero += int(ci["dice_delta_signed"][0] <= 0.0 <= ci["dice_delta_signed"][1])
    assert delta_zero == 0
    assert signed_zero / reps >= 0.85
