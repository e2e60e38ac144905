"""Paired comparison of two models on the same test set, and aggregation across seeds.

Paired: both per-sample tables are aligned by ``id`` and resampled with the *same* stratified
bootstrap indices, so the interval of every change (after - before) reflects only how the two
models differ on the same images. Per group, a Wilcoxon signed-rank test (scipy) asks whether the
per-sample changes are centred on zero.

Across seeds: mean and sample std of every number, and a marker where a change is
significant — the t-interval of the mean change across seeds excludes zero (with a single seed,
that seed's bootstrap interval is used instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from applefair.errors import InputError
from applefair.metrics.bootstrap import percentile_ci
from applefair.metrics.conventions import Convention, get_convention
from applefair.metrics.fairness import Aggregator, nest


def align(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of `a` and `b` in the same order (by ``id``); both must hold the same ids and groups."""
    for name, t in (("first", a), ("second", b)):
        if "id" not in t.columns or "group" not in t.columns:
            raise InputError(f"{name} per-sample table: expected columns id and group")
        if t["id"].duplicated().any():
            raise InputError(f"{name} per-sample table: duplicate id '{t['id'][t['id'].duplicated()].iloc[0]}'")
    ids_a, ids_b = set(a["id"].astype(str)), set(b["id"].astype(str))
    if ids_a != ids_b:
        only = sorted(ids_a ^ ids_b)[:3]
        raise InputError(f"the two per-sample tables cover different samples ({len(ids_a ^ ids_b)} ids in "
                         f"only one, e.g. {', '.join(only)}); a paired comparison needs the same test set")
    a = a.assign(id=a["id"].astype(str)).sort_values("id").reset_index(drop=True)
    b = b.assign(id=b["id"].astype(str)).sort_values("id").reset_index(drop=True)
    differ = a["group"].astype(str).to_numpy() != b["group"].astype(str).to_numpy()
    if differ.any():
        raise InputError(f"sample '{a['id'][int(np.flatnonzero(differ)[0])]}' has group "
                         f"'{a['group'][int(np.flatnonzero(differ)[0])]}' in one table and "
                         f"'{b['group'][int(np.flatnonzero(differ)[0])]}' in the other")
    return a, b


def paired_comparison(before: pd.DataFrame, after: pd.DataFrame, groups: Sequence[str],
                      metrics: Sequence[str] | None = None, *, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, convention: str | Convention | None = None) -> dict:
    """Change (after - before) of every aggregate with a paired stratified-bootstrap CI, plus Wilcoxon.

    Returns {'n', 'level', 'resamples', 'seed', 'overall'|'groups'|'fairness': nested
    {key: {'before', 'after', 'diff', 'ci', 'excludes_zero'}}, 'wilcoxon': {group: {metric: ...}},
    'convention': the metric convention (its missing-group rule applies to both tables)}.
    """
    conv = get_convention(convention)
    a, b = align(before, after)
    cols = list(metrics) if metrics is not None else [c for c in Aggregator(a, groups).columns if c in b.columns]
    rule = conv.missing_group
    agg_a = Aggregator(a, groups, cols, missing_group=rule)
    agg_b = Aggregator(b.assign(group=a["group"]), groups, cols, missing_group=rule)
    pa, pb = agg_a.point(), agg_b.point()
    sa, sb = agg_a.resamples(resamples, seed), agg_b.resamples(resamples, seed)
    flat = {}
    for k in pa:
        diff = float(pb[k][0] - pa[k][0])
        lo, hi = percentile_ci(sb[k] - sa[k], level) if resamples > 0 else (math.nan, math.nan)
        flat[k] = {"before": float(pa[k][0]), "after": float(pb[k][0]), "diff": diff, "ci": [lo, hi],
                   "excludes_zero": bool(lo > 0 or hi < 0)}
    out = {"n": int(len(a)), "level": level, "resamples": int(resamples), "seed": int(seed),
           "method": "paired percentile bootstrap stratified by group; change = after - before"}
    nest(flat, out)
    out["wilcoxon"] = wilcoxon_by_group(a, b, agg_a.present, cols)
    out["convention"] = conv.to_dict()
    return out


def wilcoxon_by_group(a: pd.DataFrame, b: pd.DataFrame, groups: Sequence[str], metrics: Sequence[str]) -> dict:
    """Wilcoxon signed-rank test of the per-sample changes, per group and overall (aligned tables).

    Zero changes are dropped (Wilcoxon's convention); the p-value is exact for up to 25 non-zero,
    untied changes and from the normal approximation (with tie correction) otherwise.
    """
    out: dict = {}
    labels = a["group"].astype(str).to_numpy()
    for g in ["overall", *groups]:
        rows = np.ones(len(a), bool) if g == "overall" else labels == g
        out[g] = {}
        for m in metrics:
            d = b[m].to_numpy(np.float64)[rows] - a[m].to_numpy(np.float64)[rows]
            d = d[~np.isnan(d)]
            entry = {"n": int(d.size), "n_nonzero": int(np.count_nonzero(d)),
                     "median_diff": float(np.median(d)) if d.size else math.nan}
            if entry["n_nonzero"] == 0:
                entry.update(statistic=math.nan, p_value=1.0 if d.size else math.nan,
                             note="no sample changed" if d.size else "no samples")
            else:
                nz = np.abs(d[d != 0])
                exact = nz.size <= 25 and np.unique(nz).size == nz.size  # exact null only without ties
                method = "exact" if exact else "approx"  # scipy's 'auto' falls back to a slow permutation test
                res = stats.wilcoxon(d[d != 0], zero_method="wilcox", method=method)
                entry.update(statistic=float(res.statistic), p_value=float(res.pvalue), method=method)
            out[g][m] = entry
    return out


def _flatten(d: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out: dict[tuple, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def aggregate_seeds(results: Sequence[dict],
                    skip: Sequence[str] = ("ci", "seed", "resamples", "level", "convention")) -> dict:
    """Mean, sample std (ddof=1) and values across seeds of every number in nested result dicts.

    Sections named in `skip` are left out (per-seed CIs are not averaged; the metric convention is a
    setting, not a result: it is carried over, and runs scored under different conventions are refused).
    Numbers missing from some seeds are aggregated over the seeds that have them (`n` says how many).
    """
    if not results:
        raise ValueError("no results to aggregate")
    conventions = {repr(r["convention"]): r["convention"] for r in results
                   if isinstance(r, dict) and isinstance(r.get("convention"), dict)}
    if len(conventions) > 1:
        names = sorted({str(c.get("name")) for c in conventions.values()})
        raise InputError(f"the runs were scored under different metric conventions ({', '.join(names)}); "
                         "aggregate runs scored under one convention")
    per_key: dict[tuple, list[float]] = {}
    for r in results:
        for k, v in _flatten(r).items():
            if any(part in skip for part in k) or not _is_number(v):
                continue
            per_key.setdefault(k, []).append(float(v))
    flat = {}
    for k, vals in per_key.items():
        arr = np.asarray(vals)
        flat[k] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
                   "n": int(arr.size), "values": vals}
    out = nest(flat)
    if conventions:
        out["convention"] = next(iter(conventions.values()))
    return out


def aggregate_comparisons(comparisons: Sequence[dict], level: float = 0.95) -> dict:
    """Across seeds, for every change in paired comparisons: mean ± std, per-seed CI count, and a marker.

    ``significant`` is true when the t-interval (at `level`) of the mean change across seeds
    excludes zero; with one seed, when that seed's bootstrap CI does. ``marker`` is '*' then, else ''.
    """
    if not comparisons:
        raise ValueError("no comparisons to aggregate")
    per_key: dict[tuple, list[dict]] = {}
    for c in comparisons:
        flat_c = _flatten({s: c.get(s, {}) for s in ("overall", "groups", "fairness")})
        for k, v in flat_c.items():
            if k[-1] == "diff" and _is_number(v):
                per_key.setdefault(k[:-1], []).append(
                    {"diff": float(v), "excludes_zero": bool(flat_c.get(k[:-1] + ("excludes_zero",), False))})
    flat = {}
    for k, items in per_key.items():
        diffs = np.array([i["diff"] for i in items])
        n = diffs.size
        mean = float(diffs.mean())
        std = float(diffs.std(ddof=1)) if n > 1 else math.nan
        if n > 1:
            half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
            ci = [mean - half, mean + half]
            significant = bool(ci[0] > 0 or ci[1] < 0)
        else:
            ci = [math.nan, math.nan]
            significant = items[0]["excludes_zero"]
        flat[k] = {"mean_diff": mean, "std_diff": std, "n_seeds": int(n), "t_ci": ci,
                   "n_seeds_ci_excludes_zero": int(sum(i["excludes_zero"] for i in items)),
                   "significant": significant, "marker": "*" if significant else ""}
    return nest(flat)


def format_mean_std(mean: float, std: float, marker: str = "", digits: int = 3) -> str:
    """'0.812 ± 0.010*' (the std is left out when it is not defined, e.g. one seed)."""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}{marker}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{marker}"
