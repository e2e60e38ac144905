"""Group fairness aggregates of per-sample scores (the `metrics.json` schema).

For a metric M where higher is better (Dice, IoU, NSD), over the groups present:

- delta = max_k M_k - min_k M_k; worst = min_k M_k (and worst_group, its name)
- skewness = (1 - min_k M_k) / (1 - max_k M_k)            (FairMedFM)
- std = population std (ddof=0) of the group means        (FairMedFM)
- es_sum = M / (1 + sum_k |M - M_k|)                       (Harvard-FairSeg ES-Dice)
- es_std = M / (1 + std_k M_k)                              (FairMedFM ES-Dice)

M is the mean over all samples (unknown group included); M_k the mean over group k.
For HD95 (lower is better) only delta, std, worst (= the largest group mean) and worst_group.

delta_signed = M_a - M_b where a and b are the groups with the highest and lowest mean *on the
data*, kept fixed in every bootstrap resample. Its point value equals delta, but its CI can include
zero: read it to ask whether a gap exists at all. delta's own CI (a max - min) excludes zero by
construction, even when all groups are equal.
Per group and overall: n, mean and the sample std (ddof=1) of the per-sample scores.
Confidence intervals come from a bootstrap stratified by group (`bootstrap.py`).

A group that is expected (`groups`) but absent from the data is listed under ``missing_groups``; the
metric convention decides the rest: ``omit`` (applefair) compares the groups present, ``nan`` (FairSeg,
FairMedFM) makes every aggregate that compares groups NaN, as those benchmarks' own code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from applefair.metrics.bootstrap import percentile_ci, stratified_moments
from applefair.metrics.conventions import MISSING_GROUP_RULES, Convention, get_convention
from applefair.metrics.segmentation import HIGHER_IS_BETTER, METRICS, metric_base

Key = tuple[str, ...]


def group_fairness_arrays(overall: np.ndarray, group_means: np.ndarray, prefix: str,
                          higher_is_better: bool = True) -> dict[str, np.ndarray]:
    """Vectorised fairness aggregates: `overall` (B,), `group_means` (B, K) -> {key: (B,)}."""
    g = np.asarray(group_means, dtype=np.float64)
    overall = np.asarray(overall, dtype=np.float64)
    lo, hi = g.min(axis=1), g.max(axis=1)
    std = g.std(axis=1, ddof=0)
    if not higher_is_better:
        return {f"{prefix}_delta": hi - lo, f"{prefix}_std": std, f"{prefix}_worst": hi}
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(hi < 1.0, (1.0 - lo) / (1.0 - hi), np.where(lo >= 1.0, 1.0, np.inf))
    return {
        f"{prefix}_delta": hi - lo,
        f"{prefix}_skewness": skew,
        f"{prefix}_std": std,
        f"{prefix}_worst": lo,
        f"es_{prefix}_sum": overall / (1.0 + np.abs(overall[:, None] - g).sum(axis=1)),
        f"es_{prefix}_std": overall / (1.0 + std),
    }


def group_fairness(overall: float, group_means: list[float], prefix: str,
                   higher_is_better: bool = True) -> dict[str, float]:
    """Fairness aggregates of one metric from its overall and per-group means."""
    arrays = group_fairness_arrays(np.array([overall]), np.asarray(group_means, dtype=np.float64)[None],
                                   prefix, higher_is_better)
    return {k: float(v[0]) for k, v in arrays.items()}


def metric_columns(per_sample: pd.DataFrame) -> list[str]:
    """The per-sample score columns (dice, iou, hd95, nsd and their per-class variants)."""
    return [c for c in per_sample.columns
            if metric_base(c) in METRICS and pd.api.types.is_numeric_dtype(per_sample[c])]


class Aggregator:
    """Every aggregate of a per-sample table as flat keys, for the data or for bootstrap resamples.

    Rows are split into strata by their group name (each unknown label is a stratum of its own);
    the same object (same strata, same seed) gives the same resamples to two aligned tables,
    which is what a paired comparison needs. `missing_group` (``omit`` or ``nan``) is the convention's
    rule for an expected group with no rows.
    """

    def __init__(self, per_sample: pd.DataFrame, groups: Sequence[str], columns: Sequence[str] | None = None,
                 missing_group: str = "omit"):
        if missing_group not in MISSING_GROUP_RULES:
            raise ValueError(f"missing_group '{missing_group}' is not one of {MISSING_GROUP_RULES}")
        self.columns = list(columns) if columns is not None else metric_columns(per_sample)
        missing = [c for c in self.columns if c not in per_sample.columns]
        if missing:
            raise KeyError(f"per-sample table lacks column(s) {missing}")
        labels = per_sample["group"].astype(str).to_numpy()
        self.stratum_names = sorted(set(labels.tolist()))
        codes = np.array([self.stratum_names.index(v) for v in labels], dtype=np.int64)
        self.strata = [np.flatnonzero(codes == i) for i in range(len(self.stratum_names))]
        self.counts = [len(s) for s in self.strata]
        expected = list(dict.fromkeys(groups))
        self.present = [g for g in expected if g in self.stratum_names]
        self.missing = [g for g in expected if g not in self.stratum_names]
        # 'nan': an expected group without rows makes every comparison of groups undefined
        self.undefined = missing_group == "nan" and bool(self.missing) and len(expected) >= 2
        self.values = per_sample[self.columns].to_numpy(dtype=np.float64)
        # which groups have the highest and lowest mean on the data; fixed for every resample
        gm = np.array([self.values[codes == self.stratum_names.index(g)].mean(axis=0) for g in self.present])
        self.hi_lo = {c: (int(np.argmax(gm[:, j])), int(np.argmin(gm[:, j]))) for j, c in enumerate(self.columns)
                      } if len(self.present) >= 2 else {}

    def point(self) -> dict[Key, np.ndarray]:
        means = [self.values[s].mean(axis=0)[None] for s in self.strata]
        msq = [(self.values[s] ** 2).mean(axis=0)[None] for s in self.strata]
        return self.aggregate(means, msq)

    def resamples(self, resamples: int, seed: int) -> dict[Key, np.ndarray]:
        """Every aggregate over `resamples` stratified bootstrap resamples: {key: (resamples,)}."""
        parts: dict[Key, list[np.ndarray]] = {}
        for means, msq in stratified_moments(self.values, self.strata, resamples, seed):
            for k, v in self.aggregate(means, msq).items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def aggregate(self, means: list[np.ndarray], msq: list[np.ndarray]) -> dict[Key, np.ndarray]:
        """Flat aggregates from per-stratum (b, M) means and means of squares."""
        n_all = sum(self.counts)
        mean_all = sum(n * m for n, m in zip(self.counts, means, strict=True)) / n_all
        msq_all = sum(n * q for n, q in zip(self.counts, msq, strict=True)) / n_all
        out: dict[Key, np.ndarray] = {}
        for j, col in enumerate(self.columns):
            out[("overall", col)] = mean_all[:, j]
            out[("overall", f"{col}_std")] = _sample_std(mean_all[:, j], msq_all[:, j], n_all)
        idx = {g: self.stratum_names.index(g) for g in self.present}
        for g, s in idx.items():
            for j, col in enumerate(self.columns):
                out[("groups", g, col)] = means[s][:, j]
                out[("groups", g, f"{col}_std")] = _sample_std(means[s][:, j], msq[s][:, j], self.counts[s])
        if self.undefined:
            for j, col in enumerate(self.columns):
                higher = HIGHER_IS_BETTER.get(metric_base(col), True)
                keys = [*group_fairness_arrays(np.zeros(1), np.zeros((1, 2)), col, higher), f"{col}_delta_signed"]
                for k in keys:
                    out[("fairness", k)] = np.full_like(mean_all[:, j], np.nan)
        elif len(self.present) >= 2:
            for j, col in enumerate(self.columns):
                gm = np.stack([means[idx[g]][:, j] for g in self.present], axis=1)
                higher = HIGHER_IS_BETTER.get(metric_base(col), True)
                for k, v in group_fairness_arrays(mean_all[:, j], gm, col, higher).items():
                    out[("fairness", k)] = v
                hi, lo = self.hi_lo[col]
                out[("fairness", f"{col}_delta_signed")] = gm[:, hi] - gm[:, lo]
        return out

    def worst_groups(self, point: dict[Key, np.ndarray]) -> dict[str, str | None]:
        """Name of the worst group for each metric column (None where the convention leaves it undefined)."""
        if self.undefined:
            return {f"{col}_worst_group": None for col in self.columns}
        out: dict[str, str | None] = {}
        if len(self.present) < 2:
            return out
        for col in self.columns:
            gm = np.array([point[("groups", g, col)][0] for g in self.present])
            higher = HIGHER_IS_BETTER.get(metric_base(col), True)
            out[f"{col}_worst_group"] = self.present[int(np.argmin(gm) if higher else np.argmax(gm))]
        return out


def _sample_std(mean: np.ndarray, msq: np.ndarray, n: int) -> np.ndarray:
    if n < 2:
        return np.full_like(mean, np.nan)
    return np.sqrt(np.clip(msq - mean * mean, 0.0, None) * n / (n - 1))


def nest(flat: dict[Key, object], into: dict | None = None) -> dict:
    """{('groups', 'F', 'dice'): v} -> {'groups': {'F': {'dice': v}}}."""
    out: dict = {} if into is None else into
    for key, v in flat.items():
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = v
    return out


def fairness_summary(per_sample: pd.DataFrame, attribute: str, groups: list[str],
                     metrics: Sequence[str] | None = None, *, bootstrap: int = 0, seed: int = 0,
                     level: float = 0.95, convention: str | Convention | None = None) -> dict:
    """metrics.json content from a per-sample table with a ``group`` column (names; others are unknown).

    `metrics`: the score columns to aggregate (default: every score column present).
    `bootstrap` > 0 adds a ``ci`` entry: percentile intervals of every aggregate from that many
    resamples stratified by group (seeded by `seed`).
    `convention` (name or `Convention`, default ``applefair``): the one the per-sample scores were
    computed with; its missing-group rule applies here and the whole convention is recorded under
    ``convention``, so that every metrics.json says how its numbers were scored.
    """
    conv = get_convention(convention)
    if len(per_sample) == 0:
        cols = list(metrics) if metrics is not None else metric_columns(per_sample)
        out = {"attribute": attribute, "overall": {"n": 0, **dict.fromkeys(cols, float("nan"))},
               "groups": {}, "fairness": {}}
        if groups:
            out["missing_groups"] = list(dict.fromkeys(groups))
        return {**out, "convention": conv.to_dict()}
    agg = Aggregator(per_sample, groups, metrics, missing_group=conv.missing_group)
    point = agg.point()
    out: dict = {"attribute": attribute, "overall": {"n": int(len(per_sample))}, "groups": {}, "fairness": {}}
    for g in agg.present:
        out["groups"][g] = {"n": agg.counts[agg.stratum_names.index(g)]}
    n_unknown = int(len(per_sample) - sum(out["groups"][g]["n"] for g in agg.present))
    if n_unknown:
        out["overall"]["n_unknown_group"] = n_unknown
    nest({k: float(v[0]) for k, v in point.items()}, out)
    if out["fairness"]:
        out["fairness"].update(agg.worst_groups(point))
    if agg.missing:
        out["missing_groups"] = list(agg.missing)
    out["convention"] = conv.to_dict()
    if bootstrap > 0:
        samples = agg.resamples(bootstrap, seed)
        ci = {k: list(percentile_ci(v, level)) for k, v in samples.items()}
        out["ci"] = {"level": level, "resamples": int(bootstrap), "seed": int(seed),
                     "method": "percentile, bootstrap stratified by group", **nest(ci)}
    return out
