"""Stratified bootstrap primitives: resample within each group, never across groups.

Stratifying by group keeps every group's size fixed in each resample, so a small group
never vanishes from a resample and the group means stay defined; the interval then
reflects sampling noise *within* groups, which is what a fairness gap is uncertain about.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def strata_of(codes: np.ndarray) -> list[np.ndarray]:
    """Row indices of each stratum (one per distinct code, in sorted order)."""
    return [np.flatnonzero(codes == c) for c in np.unique(codes)]


def stratified_moments(values: np.ndarray, strata: list[np.ndarray], resamples: int, seed: int,
                       chunk: int = 256) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """For blocks of resamples, per-stratum (mean, mean of squares) of each column of `values`.

    `values` is (N, M). Yields lists (one entry per stratum) of (b, M) arrays; the same
    random stream is used whatever `chunk` is, so results depend only on `seed`.
    """
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(s), size=(resamples, len(s))) for s in strata]
    sq = values * values
    for start in range(0, resamples, chunk):
        means, msq = [], []
        for s, d in zip(strata, draws, strict=True):
            rows = s[d[start:start + chunk]]  # (b, n_s)
            means.append(values[rows].mean(axis=1))
            msq.append(sq[rows].mean(axis=1))
        yield means, msq


def draw_indices(strata: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """(resamples, N) row indices of stratified resamples (for statistics that need the rows)."""
    rng = np.random.default_rng(seed)
    parts = [s[rng.integers(0, len(s), size=(resamples, len(s)))] for s in strata]
    return np.concatenate(parts, axis=1)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (NaN resamples ignored)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level} must lie strictly between 0 and 1")
    a = np.asarray(samples, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # an infinite skewness resample makes an endpoint inf or NaN
        lo, hi = np.percentile(a, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
