"""Reading a run folder into one object, whatever command wrote it.

Every file is optional: demo writes before/ and after/ evaluations, evaluate and mitigate one
evaluation at the top level (and deployed/ beside it), compare a results table. Every file is read
through the run-folder contract (`applefair.engine.runfolder`). A section of the report is
shown only when its files exist; a file that exists but cannot be parsed is bad input.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from applefair.engine import runfolder as rf
from applefair.engine.runfolder import read_table
from applefair.errors import InputError


@dataclass
class Evaluation:
    """One model's evaluation on the test split: metrics.json (+ per_sample.csv if present)."""

    label: str
    metrics: dict
    per_sample: pd.DataFrame | None = None


@dataclass
class RunData:
    root: Path
    config: dict | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    leakage: dict | None = None
    use: dict | None = None  # use.json: {model label: use-measure entry}
    frozen: dict | None = None
    history: pd.DataFrame | None = None
    manifest: pd.DataFrame | None = None
    manifest_path: Path | None = None
    comparison: pd.DataFrame | None = None
    comparison_path: Path | None = None
    paired: dict | None = None

    @property
    def attribute(self) -> str | None:
        for ev in self.evaluations:
            if ev.metrics.get("attribute"):
                return str(ev.metrics["attribute"])
        return None

    def evaluation(self, label: str) -> Evaluation | None:
        return next((e for e in self.evaluations if e.label == label), None)

    @property
    def before_after(self) -> tuple[Evaluation, Evaluation] | None:
        """The (reference, mitigated) pair: before/after (demo), deployed/ and the top level (evaluate,
        mitigate), else the first two evaluations."""
        by = {e.label: e for e in self.evaluations}
        for ref, new in (("before", "after"), ("deployed", "patched"), ("deployed", "model"),
                         ("deployed", "mitigated")):
            if ref in by and new in by:
                return by[ref], by[new]
        if len(self.evaluations) >= 2:
            return self.evaluations[0], self.evaluations[1]
        return None


def _evaluations(root: Path) -> list[Evaluation]:
    found: list[Evaluation] = []
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
               and d.name not in rf.NOT_EVALUATIONS and rf.has_evaluation(d)]
    rank = {name: i for i, name in enumerate(rf.EVALUATION_ORDER)}
    for d in sorted(subdirs, key=lambda d: (rank.get(d.name, len(rank)), d.name)):
        found.append(Evaluation(d.name, rf.read_metrics(d), rf.read_per_sample(d)))
    if rf.has_evaluation(root):  # evaluate, mitigate: the model as given; with a patch, deployed/ is its "before"
        top = rf.read_metrics(root)
        reference = any(e.label in (rf.BEFORE, rf.DEPLOYED) for e in found)
        label = "patched" if top.get("patch") or (root / rf.PATCH).is_file() else \
            ("mitigated" if reference else "model")
        found.append(Evaluation(label, top, rf.read_per_sample(root)))
    return found


_PLUS_MINUS = re.compile(r"^\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")


def _leading_number(v: Any) -> float:
    """'0.85 ± 0.01' or '0.85*' -> 0.85; numbers pass; anything else NaN."""
    if isinstance(v, (int, float)):
        return float(v)
    m = _PLUS_MINUS.match(str(v))
    return float(m.group(1)) if m else math.nan


def read_comparison(path: Path) -> pd.DataFrame:
    """A results table with one row per method (or per method x seed/model/dataset cell).

    Needs columns method and dice; dice_delta and es_dice_sum are used when present.
    Cells written as 'mean ± std' are read as their mean.
    """
    frame = read_table(path, keep_default_na=False, dtype=str)
    if "status" in frame.columns:  # compare lists unfinished cells too: only finished ones have numbers
        frame = frame[frame["status"].str.strip().isin(["done", ""])].reset_index(drop=True)
    missing = [c for c in ("method", "dice") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (a comparison table needs "
                         f"method, dice and ideally dice_delta, es_dice_sum)")
    for col in frame.columns:
        if col == "method":
            continue
        nums = frame[col].map(_leading_number)
        if nums.notna().sum() and nums.notna().sum() >= (frame[col].str.strip() != "").sum():
            frame[col] = nums
    return frame


def _find_comparison(root: Path) -> Path | None:
    candidates = [*sorted(root.glob("*.csv")), *sorted((root / "results").glob("*.csv"))]
    skip = {rf.PER_SAMPLE, rf.HISTORY}
    good = []
    for p in candidates:
        if p.name in skip:
            continue
        try:
            header = pd.read_csv(p, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "method" in header and "dice" in header:
            good.append(p)
    good.sort(key=lambda p: (not any(w in p.stem for w in ("result", "comparison")), str(p)))
    return good[0] if good else None


def config_path(config: dict | None, key: str) -> str | None:
    """A path the run was given: the config's `key`, else the value after `--key` in its recorded argv."""
    value = (config or {}).get(key)
    if isinstance(value, str) and value:
        return value
    argv = (config or {}).get("argv")
    if isinstance(argv, list):
        for i, arg in enumerate(argv[:-1]):
            if arg == f"--{key}":
                return str(argv[i + 1])
            if isinstance(arg, str) and arg.startswith(f"--{key}="):
                return arg.split("=", 1)[1]
    return None


def _find_manifest(root: Path, config: dict | None) -> Path | None:
    if (root / rf.DATA / rf.MANIFEST).is_file():
        return root / rf.DATA / rf.MANIFEST
    data = config_path(config, "data")
    if data:
        p = Path(data)
        p = p if p.is_absolute() else (root / p if (root / p).exists() else p)
        if p.is_dir():
            p = p / rf.MANIFEST
        if p.is_file() and p.suffix == ".csv":
            return p
    return None


def load_run(root: str | os.PathLike) -> RunData:
    """Read every known file of a run folder (none is required)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: run folder not found")
    run = RunData(root=root)
    run.config = rf.read_config(root)
    run.evaluations = _evaluations(root)
    run.leakage = rf.read_leakage(root)  # one schema per site, whichever schema the file has
    run.use = rf.read_use(root)
    run.frozen = rf.read_optional_object(root, rf.FROZEN_CHECK)
    run.paired = rf.read_optional_object(root, rf.PAIRED)
    run.history = rf.read_history(root)
    run.manifest_path = _find_manifest(root, run.config)
    if run.manifest_path is not None:
        run.manifest = read_table(run.manifest_path, dtype=str, keep_default_na=False)
        if "split" not in run.manifest.columns:
            raise InputError(f"{run.manifest_path}: missing column 'split'")
    run.comparison_path = _find_comparison(root)
    if run.comparison_path is not None:
        run.comparison = read_comparison(run.comparison_path)
    return run
