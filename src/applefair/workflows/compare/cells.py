"""One cell of the comparison grid: where it lives, the settings hash that says whether it is done,
its record, and the order the grid runs them in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from applefair.engine import runfolder
from applefair.engine.io import staged_dir
from applefair.engine.runfolder import read_json_or_none
from applefair.workflows.compare.settings import CompareSettings, DatasetSpec, SegmentorSpec

DEPLOYED = runfolder.DEPLOYED  # the pseudo-method of the unchanged model (its cells and its model folders)


def cell_dir(out: Path, dataset: str, segmentor: str, method: str, seed: int) -> Path:
    return out / runfolder.CELLS / dataset / segmentor / method / f"seed{seed}"


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
    record = read_json_or_none(path / runfolder.CELL_RESULT)
    if record is not None and record.get("status") == "done":
        if read_json_or_none(path / runfolder.METRICS) is None or not (path / runfolder.PER_SAMPLE).is_file():
            return None
    return record


def write_cell(folder: Path, record: dict, scores: pd.DataFrame | None = None, summary: dict | None = None,
               history: list[dict] | None = None) -> None:
    """The cell's folder, atomically: its scores, metrics and history (when it finished) and its record."""
    with staged_dir(folder, overwrite=True) as stage:
        if scores is not None and summary is not None:
            runfolder.write_evaluation(stage, summary, scores, strict=False)
        if history:
            runfolder.write_history(stage, history)
        runfolder.write_record(stage / runfolder.CELL_RESULT, record, strict=False)


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
