"""The comparison tables: results.csv (one row per cell), summary.csv and results.md (paper form).

Per dataset x segmentor, one row per method: overall Dice/IoU, Dice per group, the gap
(delta), skewness, ES-Dice in both forms, the fresh probes' leakage AUC (logistic on the method's
latent, spatial at the most readable decoder input), trainable
parameters, fit wall time and whether the deployed weights stayed frozen, as mean ± std
over the seeds that finished. A '*' marks a difference to `erm` that
`applefair.metrics.compare.aggregate_comparisons` calls significant: with two or more seeds,
the t-interval of the mean paired difference across seeds excludes zero; with one seed, the
paired stratified-bootstrap interval of that seed does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from applefair.engine import runfolder
from applefair.engine.io import write_csv, write_text
from applefair.metrics.compare import aggregate_comparisons, format_mean_std, paired_comparison
from applefair.workflows.compare.cells import DEPLOYED, cell_dir, cell_key, read_result
from applefair.workflows.compare.settings import CompareSettings

FAIRNESS = ("dice_delta", "dice_skewness", "es_dice_sum", "es_dice_std")
MARKED = {("overall", "dice"): "dice", ("overall", "iou"): "iou", **{("fairness", k): k for k in FAIRNESS}}
_CACHE: dict[tuple, dict] = {}


def _cell_row(folder: Path, record: dict | None) -> dict:
    if record is None:
        return {"status": "not run"}
    row = {"status": record.get("status", "unknown")}
    if row["status"] != "done":
        row["error"] = record.get("error", "")
        return row
    metrics = runfolder.read_json(folder / runfolder.METRICS)
    row.update(dice=metrics["overall"]["dice"], iou=metrics["overall"]["iou"])
    for g, v in metrics["groups"].items():
        row[f"dice[{g}]"] = v["dice"]
        row[f"n[{g}]"] = v["n"]
    row.update({k: metrics["fairness"].get(k, math.nan) for k in FAIRNESS})
    row.update(leakage_auc=record.get("leakage_auc", math.nan), spatial_auc=record.get("spatial_auc", math.nan),
               trainable_params=record.get("trainable_params"),
               seconds=record.get("seconds"), frozen=bool(record.get("frozen")))
    return row


def collect(settings: CompareSettings, out: Path) -> pd.DataFrame:
    """One row per cell of the config (finished or not)."""
    rows = []
    for ds in settings.datasets:
        for seg in settings.segmentors:
            for method in [DEPLOYED] + [m.name for m in settings.methods]:
                for seed in settings.seeds:
                    folder = cell_dir(out, ds.name, seg.key, method, seed)
                    record = read_result(folder)
                    if record is not None and record.get("key") != cell_key(settings, ds, seg, method, seed):
                        record = None  # run under other settings: stale
                    rows.append({"dataset": ds.name, "segmentor": seg.key, "method": method, "seed": seed,
                                 **_cell_row(folder, record)})
    return pd.DataFrame(rows)


def _comparison(out: Path, row: pd.Series, erm_row: pd.Series, groups: list[str], settings: CompareSettings) -> dict:
    a = cell_dir(out, row["dataset"], row["segmentor"], "erm", int(row["seed"]))
    b = cell_dir(out, row["dataset"], row["segmentor"], row["method"], int(row["seed"]))
    key = (str(a), str(b), read_result(a).get("key"), read_result(b).get("key"), settings.bootstrap, settings.level)
    if key not in _CACHE:
        before, after = runfolder.read_per_sample(a), runfolder.read_per_sample(b)
        _CACHE[key] = paired_comparison(before, after, groups, ["dice", "iou"], resamples=settings.bootstrap,
                                        seed=int(row["seed"]), level=settings.level)
    return _CACHE[key]


def marks(settings: CompareSettings, out: Path, cells: pd.DataFrame) -> dict[tuple, dict[str, str]]:
    """{(dataset, segmentor, method): {column: '*' or ''}} against erm, over seeds where both finished."""
    result: dict[tuple, dict[str, str]] = {}
    done = cells[cells["status"] == "done"]
    for (ds, seg, method), sub in done.groupby(["dataset", "segmentor", "method"], sort=False):
        if method in ("erm", DEPLOYED):
            continue
        erm = done[(done["dataset"] == ds) & (done["segmentor"] == seg) & (done["method"] == "erm")]
        paired = sub[sub["seed"].isin(erm["seed"])]
        if paired.empty:
            continue
        groups = [c[5:-1] for c in sub.columns if c.startswith("dice[") and not pd.isna(sub[c]).all()]
        comps = [_comparison(out, r, erm[erm["seed"] == r["seed"]].iloc[0], groups, settings)
                 for _, r in paired.iterrows()]
        agg = aggregate_comparisons(comps, settings.level)
        m = {col: agg.get(sec, {}).get(k, {}).get("marker", "") for (sec, k), col in MARKED.items()}
        for g in groups:
            m[f"dice[{g}]"] = agg.get("groups", {}).get(g, {}).get("dice", {}).get("marker", "")
        result[(ds, seg, method)] = m
    return result


def summarise(cells: pd.DataFrame, mark: dict) -> pd.DataFrame:
    """Mean and std over finished seeds per (dataset, segmentor, method), with the marks."""
    rows = []
    value_cols = [c for c in cells.columns if c not in ("dataset", "segmentor", "method", "seed", "status", "error")
                  and not c.startswith("n[")]
    for (ds, seg, method), sub in cells.groupby(["dataset", "segmentor", "method"], sort=False):
        done = sub[sub["status"] == "done"]
        row = {"dataset": ds, "segmentor": seg, "method": method, "seeds_done": len(done), "seeds": len(sub),
               "failed": int((sub["status"] == "failed").sum())}
        for c in value_cols:
            vals = pd.to_numeric(done[c], errors="coerce").astype(float) if len(done) else pd.Series(dtype=float)
            vals = vals[np.isfinite(vals)] if c != "dice_skewness" else vals.dropna()
            row[f"{c}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{c}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            row[f"{c}_mark"] = mark.get((ds, seg, method), {}).get(c, "")
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(row: pd.Series, col: str, digits: int = 3) -> str:
    mean = row.get(f"{col}_mean", math.nan)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if col == "trainable_params":
        return f"{int(mean):,}"
    if col == "frozen":
        return "yes" if mean >= 1 else ("no" if mean <= 0 else "mixed")
    return format_mean_std(float(mean), float(row.get(f"{col}_std", math.nan)), row.get(f"{col}_mark", ""), digits)


def markdown(settings: CompareSettings, summary: pd.DataFrame, cells: pd.DataFrame) -> str:
    lines = [f"# Comparison: {settings.name}", "",
             f"Seeds {settings.seeds}; budget {settings.budget or 'defaults'}; deployed model: ERM, "
             f"{settings.deploy.epochs} epochs. Values: mean ± std over finished seeds (test split). "
             "`*`: difference to `erm` significant (>= 2 seeds: t-interval of the mean paired difference "
             f"excludes 0; 1 seed: paired stratified bootstrap, {settings.bootstrap} resamples, "
             f"{settings.level:.0%}). Δ = max - min group Dice; skew = (1 - min)/(1 - max); ES-sum = "
             "Dice/(1 + Σ|Dice - Dice_g|) (Harvard-FairSeg); ES-std = Dice/(1 + std_g) (FairMedFM); "
             "leak = fresh logistic probe AUC on the latent the method works on, as the decoder receives it "
             "(test split, cross-validated; — where not one latent); spatial = the spatial probe's AUC at the "
             "decoder input that gives the group away most (skips included; each cell's result.json names "
             "it); params = weights training changed in the shipped model; "
             "time = fit wall time (s).", ""]
    for (ds, seg), block in summary.groupby(["dataset", "segmentor"], sort=False):
        groups = [c[5:-6] for c in block.columns if c.startswith("dice[") and c.endswith("]_mean")
                  and block[c].notna().any()]
        head = ["method", "seeds", "Dice", "IoU", *[f"Dice {g}" for g in groups], "Δ", "skew", "ES-sum", "ES-std",
                "leak", "spatial", "params", "frozen", "time (s)"]
        lines += [f"## {ds} · {seg}", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for _, r in block.iterrows():
            seeds = f"{r['seeds_done']}/{r['seeds']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
            vals = [_fmt(r, c) for c in ("dice", "iou", *[f"dice[{g}]" for g in groups], "dice_delta",
                                          "dice_skewness", "es_dice_sum", "es_dice_std", "leakage_auc",
                                          "spatial_auc")]
            vals += [_fmt(r, "trainable_params"), _fmt(r, "frozen"), _fmt(r, "seconds", 1)]
            lines.append(f"| {r['method']} | {seeds} | " + " | ".join(vals) + " |")
        lines.append("")
    missing = cells[cells["status"] != "done"]
    total = len(cells)
    lines += ["## Cells", "", f"{total - len(missing)} of {total} cells finished."]
    if len(missing):
        lines += ["", "Cells without a result (grouped by dataset, segmentor, seed and status):", "",
                  "| dataset | segmentor | seed | status | methods |", "|---|---|---:|---|---|"]
        n_methods = cells["method"].nunique()
        for (ds, seg, seed, status), sub in missing.groupby(["dataset", "segmentor", "seed", "status"], sort=False):
            names = "all" if len(sub) == n_methods else ", ".join(sub["method"])
            if status == "failed":
                names += f" ({str(sub['error'].iloc[0])[:100]})"
            lines.append(f"| {ds} | {seg} | {seed} | {status} | {names} |")
    return "\n".join(lines) + "\n"


def write_tables(settings: CompareSettings, out: Path) -> pd.DataFrame:
    """(Re)write results.csv, summary.csv and results.md from the cell folders; returns the summary."""
    cells = collect(settings, out)
    summary = summarise(cells, marks(settings, out, cells))
    write_csv(out / runfolder.RESULTS, cells)
    write_csv(out / runfolder.SUMMARY, summary)
    write_text(out / runfolder.RESULTS_MD, markdown(settings, summary, cells))
    return summary
