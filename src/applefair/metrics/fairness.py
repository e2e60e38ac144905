"""Group fairness aggregates of per-sample scores (the `metrics.json` schema).

- delta = max_k M_k - min_k M_k; worst = min_k M_k
- skewness = (1 - min_k M_k) / (1 - max_k M_k)            (FairMedFM)
- std = population std (ddof=0) of the group means        (FairMedFM)
- es_sum = M / (1 + sum_k |M - M_k|)                       (Harvard-FairSeg ES-Dice)
- es_std = M / (1 + std_k M_k)                              (FairMedFM ES-Dice)
M is the mean over all samples (unknown group included); M_k the mean over group k.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def group_fairness(overall: float, group_means: list[float], prefix: str) -> dict[str, float]:
    """Fairness aggregates of one metric from its overall and per-group means."""
    g = np.asarray(group_means, dtype=np.float64)
    lo, hi = float(g.min()), float(g.max())
    skew = (1.0 - lo) / (1.0 - hi) if hi < 1.0 else (1.0 if lo >= 1.0 else float("inf"))
    std = float(g.std(ddof=0))
    return {
        f"{prefix}_delta": hi - lo,
        f"{prefix}_skewness": skew,
        f"{prefix}_std": std,
        f"{prefix}_worst": lo,
        f"es_{prefix}_sum": overall / (1.0 + float(np.abs(overall - g).sum())),
        f"es_{prefix}_std": overall / (1.0 + std),
    }


def fairness_summary(per_sample: pd.DataFrame, attribute: str, groups: list[str],
                     metrics: tuple[str, ...] = ("dice", "iou")) -> dict:
    """metrics.json content from a per-sample table with a ``group`` column (names; 'unknown' excluded)."""
    out: dict = {"attribute": attribute, "overall": {"n": int(len(per_sample))}, "groups": {}, "fairness": {}}
    for m in metrics:
        out["overall"][m] = float(per_sample[m].mean())
    present = [g for g in groups if (per_sample["group"] == g).any()]
    for g in present:
        sub = per_sample[per_sample["group"] == g]
        out["groups"][g] = {"n": int(len(sub)), **{m: float(sub[m].mean()) for m in metrics}}
    n_unknown = int((~per_sample["group"].isin(groups)).sum())
    if n_unknown:
        out["overall"]["n_unknown_group"] = n_unknown
    if len(present) >= 2:
        for m in metrics:
            out["fairness"].update(group_fairness(out["overall"][m], [out["groups"][g][m] for g in present], m))
    return out
