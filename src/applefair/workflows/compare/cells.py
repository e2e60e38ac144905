"""One cell of the comparison grid: where it lives, the settings hash that says whether it is done,
its record, and the order the grid runs them in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from applefair.engine.io import staged_dir, write_csv, write_json
from applefair.workflows.compare.settings import CompareSettings, DatasetSpec, SegmentorSpec

DEPLOYED = "deployed"


def cell_dir(out: Path, dataset: str, segmentor: str, method: str, seed: int) -> Path:
    return out / "cells" / dataset / segmentor / method / f"seed{seed}"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_key(settings: CompareSettings, ds: DatasetSpec, seg: SegmentorSpec, method: str, seed: int) -> str:
    """Settings hash of one cell: a cell is redone when anything it depends on changes."""
    parts = {"dataset": ds.model_dump(), "segmentor": seg.model_dump(), "deploy": settings.deploy.model_dump(),
             "seed": seed, "leakage": settings.leakage}
    if method != DEPLOYED:
        spec = next(m for m in settings.methods if m.name == method)
        parts.update(budget=settings.budget, method=spec.model_dump())
    return _hash(parts)


def read_result(path: Path) -> dict | None:
    """A cell's record; None when missing or unreadable, and for a 'done' cell whose scores are gone
    (a damaged cell is redone, never taken as finished)."""
    record = read_json_or_none(path / "result.json")
    if record is not None and record.get("status") == "done":
        if read_json_or_none(path / "metrics.json") is None or not (path / "per_sample.csv").is_file():
            return None
    return record


def read_json_or_none(f: Path) -> dict | None:
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_cell(folder: Path, record: dict, scores: pd.DataFrame | None = None, summary: dict | None = None,
               history: list[dict] | None = None) -> None:
    with staged_dir(folder, overwrite=True) as stage:
        if scores is not None:
            write_csv(stage / "per_sample.csv", scores)
        if summary is not None:
            write_json(stage / "metrics.json", summary)
        if history:
            write_csv(stage / "history.csv", pd.DataFrame(history))
        write_json(stage / "result.json", record)


def plan(settings: CompareSettings, only: Mapping[str, list] | None = None) -> list[tuple]:
    """The cells of the config, in run order: seed, dataset, segmentor, then deployed + methods.

    `only` restricts what runs now (keys datasets, segmentors, methods, seeds); tables still list every cell.
    """
    only = {k: v for k, v in (only or {}).items() if v}
    cells = []
    for seed in settings.seeds:
        if "seeds" in only and seed not in only["seeds"]:
            continue
        for ds in settings.datasets:
            if "datasets" in only and ds.name not in only["datasets"]:
                continue
            for seg in settings.segmentors:
                if "segmentors" in only and seg.key not in only["segmentors"]:
                    continue
                for m in [DEPLOYED] + [m.name for m in settings.methods]:
                    if "methods" in only and m not in only["methods"] and m != DEPLOYED:
                        continue
                    cells.append((seed, ds, seg, m))
    return cells
