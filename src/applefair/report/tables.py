"""The report's tables as pandas frames (written as CSV for papers, rendered in HTML/markdown).

Numbers stay numbers here; formatting happens in the renderers. Confidence intervals are
read from metrics.json's optional ``"ci"`` key, which mirrors the metric's place:
``ci["overall"]["dice"]``, ``ci["groups"][g]["dice"]``, ``ci["fairness"]["dice_delta"]``, each
``[low, high]`` or ``{"low": .., "high": ..}`` (flat keys like ``"groups.F.dice"`` also work).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from applefair.data.groups import GroupSpec
from applefair.engine.runfolder import leakage_per_site
from applefair.report.rundata import Evaluation

FAIRNESS_ROWS = (("dice_delta", "Dice gap (max - min)"), ("dice_worst", "Dice, worst group"),
                 ("dice_std", "Dice std of group means"), ("dice_skewness", "Dice skewness"),
                 ("es_dice_sum", "ES-Dice (Harvard-FairSeg, sum)"), ("es_dice_std", "ES-Dice (FairMedFM, std)"),
                 ("iou_delta", "IoU gap (max - min)"), ("es_iou_sum", "ES-IoU (Harvard-FairSeg, sum)"),
                 ("es_iou_std", "ES-IoU (FairMedFM, std)"), ("hd95_delta", "HD95 gap (max - min)"))


def ci_pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = v
    elif isinstance(v, dict):
        keys = next((k for k in (("low", "high"), ("lo", "hi"), ("lower", "upper"), ("ci_low", "ci_high"))
                     if k[0] in v and k[1] in v), None)
        if keys is None:
            return ci_pair(v.get("ci")) if "ci" in v else None
        lo, hi = v[keys[0]], v[keys[1]]
    else:
        return None
    try:
        return float(lo), float(hi)
    except (TypeError, ValueError):
        return None


def ci_interval(metrics: dict, section: str, key: str, group: str | None = None) -> tuple[float, float] | None:
    """CI of one metric from metrics.json's "ci" key, or None when absent."""
    ci = metrics.get("ci")
    if not isinstance(ci, dict):
        return None
    path = ["groups", group, key] if group is not None else [section, key]
    node: Any = ci
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    found = ci_pair(node)
    if found is None:
        found = ci_pair(ci.get(".".join(str(p) for p in path)))
    if found is None and group is None:
        found = ci_pair(ci.get(key))
    return found


def metric_rows(evaluations: list[Evaluation]) -> list[tuple[str, str, str | None, str]]:
    """(label, section, group, key) for the rows every evaluation table shows."""
    ref = evaluations[0].metrics
    rows: list[tuple[str, str, str | None, str]] = [("Dice, overall", "overall", None, "dice")]
    for key, label in (("iou", "IoU"), ("nsd", "NSD"), ("hd95", "HD95")):
        if any(key in e.metrics["overall"] for e in evaluations):
            rows.append((f"{label}, overall", "overall", None, key))
    groups: list[str] = []
    for e in evaluations:
        groups += [g for g in e.metrics["groups"] if g not in groups]
    attr = ref.get("attribute", "group")
    for g in groups:
        n = next((e.metrics["groups"][g].get("n") for e in evaluations if g in e.metrics["groups"]), None)
        rows.append((f"Dice, {attr}={g}" + (f" (n={n})" if n is not None else ""), "groups", g, "dice"))
    for key, label in FAIRNESS_ROWS:
        if any(key in e.metrics["fairness"] for e in evaluations):
            rows.append((label, "fairness", None, key))
    return rows


def _value(metrics: dict, section: str, group: str | None, key: str) -> float:
    node = metrics.get(section, {})
    if group is not None:
        node = node.get(group, {})
    v = node.get(key, math.nan) if isinstance(node, dict) else math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def evaluation_table(evaluations: list[Evaluation], paired: dict | None = None) -> pd.DataFrame:
    """One row per metric; per evaluation its value and CI; a change column for two evaluations.

    `paired` (paired.json: ``{section: {key: {"diff", "ci"}}}``, groups nested by name) adds the
    CI of the change from a paired bootstrap.
    """
    records = []
    for label, section, group, key in metric_rows(evaluations):
        rec: dict[str, Any] = {"metric": label, "key": key, "group": group if group is not None else ""}
        for e in evaluations:
            rec[e.label] = _value(e.metrics, section, group, key)
            ci = ci_interval(e.metrics, section, key, group)
            rec[f"{e.label}_ci_low"], rec[f"{e.label}_ci_high"] = ci if ci else (math.nan, math.nan)
        if len(evaluations) == 2:
            rec["change"] = rec[evaluations[1].label] - rec[evaluations[0].label]
            node = (paired or {}).get(section, {})
            node = node.get(group, {}) if group is not None and isinstance(node, dict) else node
            ci = ci_pair(node.get(key)) if isinstance(node, dict) else None
            rec["change_ci_low"], rec["change_ci_high"] = ci if ci else (math.nan, math.nan)
        records.append(rec)
    frame = pd.DataFrame(records)
    ci_cols = [c for c in frame.columns if c.endswith(("_ci_low", "_ci_high"))]
    return frame.drop(columns=[c for c in ci_cols if frame[c].isna().all()])


def data_summary(manifest: pd.DataFrame, attribute: str | None, groups: list[str]) -> pd.DataFrame | None:
    """Counts per split x group, with unknown attribute values as their own column."""
    if attribute is None or attribute not in manifest.columns:
        return None
    spec = GroupSpec(attribute, list(groups))
    if not spec.groups:
        spec.fit(manifest)
    ids = spec.assign(manifest)
    names = np.array([spec.name(int(i)) for i in ids], dtype=object)
    table = pd.crosstab(manifest["split"].to_numpy(), names)
    cols = [g for g in spec.groups if g in table.columns] + (["unknown"] if "unknown" in table.columns else [])
    table = table.reindex(columns=cols, fill_value=0)
    order = [s for s in ("train", "val", "test") if s in table.index] + \
            [s for s in table.index if s not in ("train", "val", "test")]
    table = table.reindex(order)
    table["total"] = table.sum(axis=1)
    table.loc["all"] = table.sum(axis=0)
    table.index.name = "split"
    return table.reset_index()


def split_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per split, for manifests without the report's attribute column."""
    counts = manifest["split"].value_counts().rename_axis("split").reset_index(name="images")
    return counts


_PROBE_ORDER = ("", "mlp_", "spatial_")


def _auc_order(key: str) -> tuple[int, int, str]:
    probe = next((i for i, pre in reversed(list(enumerate(_PROBE_ORDER))) if key.startswith(f"{pre}auc")), 9)
    when = 0 if key.endswith("_before") else (1 if key.endswith("_after") else 2)
    return probe, when, key


def leakage_table(leakage: dict) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(numbers, display): one row per decoder input (site, its role), every AUC key with its CI ('<key>_ci':
    [low, high]), probes in the order logistic, MLP, spatial, each before then after.

    'auc' / 'mlp_auc' / 'spatial_auc' (a copy of what the decoder sees) are dropped when the before/after keys
    exist.
    """
    records, shown = [], []
    leakage = leakage_per_site(leakage)
    for site, values in leakage.items():
        if not isinstance(values, dict):
            continue
        rec: dict[str, Any] = {"site": site}
        disp: dict[str, Any] = {"site": site}
        if isinstance(values.get("role"), str):
            rec["role"] = disp["role"] = values["role"]
        for k in sorted(values, key=_auc_order):
            v = values[k]
            if "auc" not in k.lower() or k.endswith("_ci") or isinstance(v, bool):
                continue
            if not (isinstance(v, (int, float)) or v is None):
                continue
            if not k.endswith(("_before", "_after")) and (f"{k}_after" in values or f"{k}_before" in values):
                continue
            rec[k] = math.nan if v is None else float(v)
            disp[k] = "" if v is None else f"{float(v):.3f}"
            pair = ci_pair(values.get(f"{k}_ci"))
            if pair is not None and all(p == p for p in pair):
                rec[f"{k}_ci_low"], rec[f"{k}_ci_high"] = pair
                disp[k] += f" [{pair[0]:.3f}, {pair[1]:.3f}]"
        if any("auc" in k for k in rec):
            records.append(rec)
            shown.append(disp)
    if not records:
        return None
    return pd.DataFrame(records), pd.DataFrame(shown).fillna("")


def _ci_text(v: Any, ci: Any, scale: float = 1.0, signed: bool = False) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return ""
    digits = 1 if scale == 100 else 3  # Dice points with one decimal, other numbers with three
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(scale * v)
    pair = ci_pair(ci)
    if pair is not None and all(math.isfinite(p) for p in pair):
        text += " [" + ", ".join(fmt.format(scale * p) for p in pair) + "]"
    return text


def use_table(use: dict) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(numbers, display): one row per model of use.json: the output change with its CI, its level with the
    groups permuted, the verdict, and per group the output change and the change of Dice against the truth."""
    records, shown = [], []
    for label, e in (use or {}).items():
        if not isinstance(e, dict) or "output_change" not in e:
            continue
        rec: dict[str, Any] = {"model": label, "statistic": e.get("statistic", ""),
                               "output_change": e.get("output_change"),
                               "null_output_change": e.get("null_output_change"),
                               "null_output_change_max": e.get("null_output_change_max"),
                               "p_value": e.get("p_value"), "used": e.get("used")}
        pair = ci_pair(e.get("output_change_ci"))
        if pair:
            rec["output_change_ci_low"], rec["output_change_ci_high"] = pair
        disp: dict[str, Any] = {"model": label, "output change": _ci_text(e.get("output_change"),
                                                                         e.get("output_change_ci")),
                                "groups permuted (mean, max)": ", ".join(
                                    _ci_text(e.get(k), None) for k in ("null_output_change", "null_output_change_max")),
                                "used": {True: "yes", False: "no"}.get(e.get("used"), "")}
        for g, ge in (e.get("groups") or {}).items():
            if not isinstance(ge, dict):
                continue
            rec[f"output_change_{g}"] = ge.get("output_change")
            rec[f"dice_change_{g}"] = ge.get("dice_change")
            gp = ci_pair(ge.get("dice_change_ci"))
            if gp:
                rec[f"dice_change_{g}_ci_low"], rec[f"dice_change_{g}_ci_high"] = gp
            disp[f"output change {g}"] = _ci_text(ge.get("output_change"), ge.get("output_change_ci"))
            disp[f"Dice change {g} (points)"] = _ci_text(ge.get("dice_change"), ge.get("dice_change_ci"), 100, True)
        records.append(rec)
        shown.append(disp)
    if not records:
        return None
    return pd.DataFrame(records), pd.DataFrame(shown).fillna("")


COMPARE_KEYS = ("dataset", "model", "segmentor", "attribute")


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (dataset/model cell, method), with a Pareto flag per cell.

    Pareto: no other method in the same cell has Dice >= and gap <= with one strictly better.
    """
    keys = [k for k in COMPARE_KEYS if k in frame.columns]
    numeric = [c for c in frame.columns
               if c not in (*keys, "method", "seed") and pd.api.types.is_numeric_dtype(frame[c])]
    agg = frame.groupby([*keys, "method"], sort=False, dropna=False)[numeric].mean().reset_index()
    agg.insert(len(keys) + 1, "runs", frame.groupby([*keys, "method"], sort=False, dropna=False).size().to_numpy())
    agg["pareto"] = False
    fair = "dice_delta" if "dice_delta" in agg.columns else None
    for _, idx in (agg.groupby(keys, sort=False, dropna=False).groups.items() if keys else [(None, agg.index)]):
        sub = agg.loc[idx]
        agg.loc[idx, "pareto"] = pareto_mask(sub["dice"].to_numpy(float),
                                             sub[fair].to_numpy(float) if fair else np.zeros(len(sub)))
    return agg


def pareto_mask(utility: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """True where no other point has utility >= and gap <= with at least one strict (NaNs never on it)."""
    ok = ~(np.isnan(utility) | np.isnan(gap))
    mask = np.zeros(len(utility), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (utility >= utility[i]) & (gap <= gap[i]) & ((utility > utility[i]) | (gap < gap[i]))
        mask[i] = not dominated.any()
    return mask


def config_rows(config: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested config into (dotted key, value text) rows."""
    rows: list[tuple[str, str]] = []
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows += config_rows(v, key + ".")
        elif isinstance(v, (list, tuple)) and any(isinstance(x, (dict, list)) for x in v):
            rows.append((key, json.dumps(v, default=str)))
        elif isinstance(v, (list, tuple)):
            rows.append((key, " ".join(map(str, v)) if key.endswith("argv") else ", ".join(map(str, v))))
        else:
            rows.append((key, "" if v is None else str(v)))
    return rows
