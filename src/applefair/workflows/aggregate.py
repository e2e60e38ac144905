"""`applefair aggregate-seeds` as a function: one evaluation's numbers across run folders (seeds)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from applefair.engine import runfolder
from applefair.engine.io import json_safe, write_json
from applefair.errors import InputError
from applefair.metrics.compare import aggregate_comparisons, aggregate_seeds, format_mean_std


def _texts(node: dict, key_mean: str, key_std: str, marker_key: str | None = None) -> None:
    """Add a 'text' ('mean ± std[*]') to every leaf dict holding `key_mean`."""
    for v in node.values():
        if isinstance(v, dict):
            if key_mean in v:
                v["text"] = format_mean_std(v[key_mean], v[key_std], v.get(marker_key, "") if marker_key else "")
            else:
                _texts(v, key_mean, key_std, marker_key)


def aggregate_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Across run folders (seeds): mean ± std of metrics.json, leakage.json, and paired.json markers."""
    if len(runs) < 1:
        raise InputError("aggregate-seeds: give at least one run folder")
    metrics, leak, paired = [], [], []
    for r in map(Path, runs):
        if not runfolder.has_evaluation(r):
            raise InputError(f"{r}: no {runfolder.METRICS} (expected a folder written by applefair evaluate)")
        metrics.append(runfolder.read_json_object(r / runfolder.METRICS))
        if (found := runfolder.read_leakage(r)) is not None:
            leak.append(found)
        if (found := runfolder.read_optional_object(r, runfolder.PAIRED)) is not None:
            paired.append(found)
    result: dict = {"runs": [str(r) for r in runs], "metrics": aggregate_seeds(metrics)}
    if leak:
        result["leakage"] = aggregate_seeds(leak)
    if paired:
        result["paired"] = aggregate_comparisons(paired)
        _texts(result["paired"], "mean_diff", "std_diff", "marker")
    for section in ("metrics", "leakage"):
        if section in result:
            _texts(result[section], "mean", "std")
    write_json(out, json_safe(result))
    return result
