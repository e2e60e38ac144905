"""Property-based tests of the metrics (bounds, permutation invariance, ES <= overall)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from applefair.metrics.fairness import fairness_summary
from applefair.metrics.segmentation import per_sample_metrics

scores = st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=4, max_size=40)


def _frame(values: list[float], n_groups: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = [f"g{i % n_groups}" for i in range(len(values))]
    rng.shuffle(groups)
    return pd.DataFrame({"id": range(len(values)), "group": groups, "dice": values, "iou": values})


@settings(max_examples=30, deadline=None)
@given(scores, st.integers(2, 4), st.integers(0, 1000))
def test_fairness_bounds_and_es_not_above_overall(values, k, seed):
    frame = _frame(values, k, seed)
    m = fairness_summary(frame, "a", [f"g{i}" for i in range(k)])
    f = m["fairness"]
    if not f:  # fewer than two groups present
        return
    assert 0.0 <= m["overall"]["dice"] <= 1.0
    assert 0.0 <= f["dice_delta"] <= 1.0
    assert f["dice_worst"] <= min(g["dice"] for g in m["groups"].values()) + 1e-12
    assert f["es_dice_sum"] <= m["overall"]["dice"] + 1e-12
    assert f["es_dice_std"] <= m["overall"]["dice"] + 1e-12
    assert f["dice_skewness"] >= 1.0 - 1e-12


@settings(max_examples=25, deadline=None)
@given(scores, st.integers(2, 4), st.integers(0, 1000))
def test_fairness_invariant_to_group_relabelling(values, k, seed):
    frame = _frame(values, k, seed)
    names = [f"g{i}" for i in range(k)]
    perm = dict(zip(names, reversed(names), strict=True))
    relabelled = frame.assign(group=frame["group"].map(perm))
    a = fairness_summary(frame, "a", names)["fairness"]
    b = fairness_summary(relabelled, "a", list(reversed(names)))["fairness"]
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], str):  # a group name: relabelled consistently
            assert perm.get(a[key], a[key]) == b[key], key
        else:
            assert np.isclose(a[key], b[key]), key


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_dice_iou_bounds_and_relation(seed):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    target = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    m = per_sample_metrics(pred, target)
    assert torch.all((m["dice"] >= 0) & (m["dice"] <= 1))
    # IoU = Dice / (2 - Dice) for every sample
    assert torch.allclose(m["iou"], m["dice"] / (2 - m["dice"]), atol=1e-6)
    assert torch.allclose(per_sample_metrics(target, target)["dice"], torch.ones(3))
