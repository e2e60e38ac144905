"""The run-folder contract: the name of every file a run writes, and the one writer and reader of each.

Every command writes one folder (docs/report.md lists the files per command). Use cases write
through the functions here and `report/` reads through them, so a file's name and schema live in
one place. The names below are the only string literals of these file names in the package
(a test checks it).

Evaluations share one layout: ``metrics.json`` (the `metrics.fairness_summary` schema) and
``per_sample.csv`` side by side, at the run's top level or in a named sub-folder
(``before/``, ``after/``, ``deployed/``, ``val/``). ``leakage.json`` has one schema: one entry per
site (the module path of a latent the decoder receives), each holding that site's probe AUCs
(``auc_before``/``auc_after``, ``<probe>_auc_before``... with ``_ci`` intervals) and its ``role``; an
older flat schema (``{"sites": [...], "auc_before": x, "auc_after": y}``) is still read and converted.
``use.json`` holds one entry per model evaluated (``deployed``, ``patched``, ``mitigated`` or ``model``):
the use measure of `metrics.use` (docs/metrics.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from applefair.engine.io import json_safe, write_csv, write_json, write_yaml
from applefair.errors import InputError

# ----------------------------------------------------------------------------- file names

CONFIG = "config.yaml"  # the resolved configuration, versions, command line
RUN_LOG = "run.log"
REPORT_LOG = "report.log"
METRICS = "metrics.json"  # per-group metrics, fairness aggregates, CIs
PER_SAMPLE = "per_sample.csv"  # one row per scored image: id, group, one column per metric
LEAKAGE = "leakage.json"  # fresh-probe AUCs per site
CASES_JSON = "cases.json"  # demo: one entry per case (its folder, gap and Dice before/after, outcome, use)
USE = "use.json"  # the use measure per model: does the output depend on the group statistics of its inputs?
FROZEN_CHECK = "frozen_check.json"  # SHA-256 of the deployed weights before/after
PAIRED = "paired.json"  # change after - before with paired CIs and Wilcoxon tests
HISTORY = "history.csv"  # one row per training epoch
PATCH = "patch.safetensors"  # the fairness patch (perturbers + header)
CHECKPOINT = "checkpoint.safetensors"  # a resumable training state
RESTART_CHECKPOINT = "checkpoint_restart{}.safetensors"  # APPLE restart r's resumable state (`restarts` > 1)
CURVES = "curves.png"
EXPORT = "export.json"
TORCHSCRIPT = "mitigated.torchscript.pt"
ONNX = "mitigated.onnx"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
MODEL_CONFIG = "model.yaml"  # a model folder: architecture name, arguments, sites
MODEL_WEIGHTS = "model.safetensors"
MODEL_SOURCE = "source.yaml"  # an imported model folder: where the model came from (its configs under source/)
MANIFEST = "manifest.csv"  # a data folder's table of samples
CELL_RESULT = "result.json"  # compare: one cell's record
DEPLOY_INFO = "train.json"  # compare: how a deployed model was trained
RESULTS = "results.csv"  # compare: one row per cell
SUMMARY = "summary.csv"  # compare: mean and std over seeds
RESULTS_MD = "results.md"
COMPARE_LOG = "compare.log"
BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
# an on-disk array store (the latent cache; engine.arraystore), one folder per key
STORE_META = "store.json"
STORE_FILLED = "filled.npy"
STORE_LOCK = "build.lock"

# sub-folders
DATA = "data"
DEPLOYED = "deployed"  # the deployed model folder (demo), or its evaluation (mitigate, evaluate)
BEFORE = "before"  # demo: the deployed model's evaluation
AFTER = "after"  # demo: the patched model's evaluation
VALIDATION = "val"  # mitigate: the validation split's evaluation
TABLES = "tables"
PLOTS = "plots"
CELLS = "cells"
LATENT_CACHE = "latent_cache"
PREDICTIONS = "predictions"  # evaluate --save-predictions: one mask file per sample, named by its id

# what marks a folder as a run folder (`applefair report`)
RUN_MARKERS = (CONFIG, METRICS, f"*/{METRICS}", HISTORY, LEAKAGE, USE, CASES_JSON, RESULTS, f"*/{RESULTS}")
# sub-folders whose metrics.json is not a test-split evaluation of the run's models
NOT_EVALUATIONS = frozenset({DATA, TABLES, PLOTS, VALIDATION, "validation", "train", CELLS, "results",
                             "checkpoints", PREDICTIONS})
# evaluation sub-folders in display order (others follow alphabetically)
EVALUATION_ORDER = (BEFORE, DEPLOYED, AFTER, "mitigated")


def evaluation_folder(root: str | os.PathLike, name: str = "") -> Path:
    """Where an evaluation named `name` lives: the run's top level ('') or a sub-folder."""
    return Path(root) / name if name else Path(root)


def is_run_folder(root: str | os.PathLike) -> bool:
    root = Path(root)
    return any(any(root.glob(m)) for m in RUN_MARKERS)


# ----------------------------------------------------------------------------- writers


def write_config(root: str | os.PathLike, config: Mapping[str, Any]) -> None:
    write_yaml(Path(root) / CONFIG, json_safe(dict(config)))


def write_evaluation(folder: str | os.PathLike, metrics: Mapping[str, Any], per_sample: pd.DataFrame,
                     strict: bool = True) -> None:
    """metrics.json and per_sample.csv of one model on one split. `strict`: NaN and infinities are written as
    null (strict JSON); compare's cells keep them (its tables average an infinite skewness as such)."""
    write_json(Path(folder) / METRICS, json_safe(dict(metrics)) if strict else dict(metrics))
    write_csv(Path(folder) / PER_SAMPLE, per_sample)


def write_leakage(root: str | os.PathLike, per_site: Mapping[str, Mapping[str, Any]]) -> None:
    """leakage.json: {site: {auc_before, auc_after, ...}} (the one schema)."""
    write_json(Path(root) / LEAKAGE, json_safe({str(k): dict(v) for k, v in per_site.items()}))


def write_use(root: str | os.PathLike, per_model: Mapping[str, Mapping[str, Any]]) -> None:
    """use.json: {model label: use-measure entry} (the one schema, `metrics.use.use_measure`)."""
    write_json(Path(root) / USE, json_safe({str(k): dict(v) for k, v in per_model.items()}))


def write_cases(root: str | os.PathLike, cases: Mapping[str, Mapping[str, Any]]) -> None:
    write_json(Path(root) / CASES_JSON, json_safe({str(k): dict(v) for k, v in cases.items()}))


def read_cases(root: str | os.PathLike) -> dict[str, dict] | None:
    """cases.json of a demo run ({case: entry}), or None where the run has none."""
    return read_optional_object(root, CASES_JSON)


def write_frozen_check(root: str | os.PathLike, check: Mapping[str, Any]) -> None:
    """frozen_check.json: ``hash_before``, ``hash_after``, ``unchanged`` and any extra fields."""
    missing = [k for k in ("hash_before", "hash_after", "unchanged") if k not in check]
    if missing:
        raise ValueError(f"frozen check lacks {missing}")
    write_json(Path(root) / FROZEN_CHECK, json_safe(dict(check)))


def write_paired(root: str | os.PathLike, paired: Mapping[str, Any]) -> None:
    write_json(Path(root) / PAIRED, json_safe(dict(paired)))


def write_history(root: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    write_csv(Path(root) / HISTORY, pd.DataFrame(list(rows)))


def write_record(path: str | os.PathLike, record: Mapping[str, Any], strict: bool = True) -> None:
    """A plain JSON record (compare's result.json and train.json, export.json); `strict` as in `write_evaluation`."""
    write_json(path, json_safe(dict(record)) if strict else dict(record))


# ----------------------------------------------------------------------------- readers


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: not readable ({exc.strerror})") from None


def read_json_object(path: str | os.PathLike) -> dict:
    value = read_json(path)
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def read_json_or_none(path: str | os.PathLike) -> dict | None:
    """A JSON object, or None when the file is missing or unreadable (resumable runs redo such work)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not valid YAML ({first})") from None


def read_table(path: str | os.PathLike, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None


def read_config(root: str | os.PathLike) -> dict | None:
    path = Path(root) / CONFIG
    if not path.is_file():
        return None
    cfg = read_yaml(path)
    return cfg if isinstance(cfg, dict) else {"config": cfg}


def read_metrics(folder: str | os.PathLike) -> dict:
    """metrics.json of an evaluation (an InputError if it lacks the 'overall' section)."""
    path = Path(folder) / METRICS
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("overall"), dict):
        raise InputError(f"{path}: expected a metrics.json object with an 'overall' key")
    m.setdefault("groups", {})
    m.setdefault("fairness", {})
    return m


def read_per_sample(folder: str | os.PathLike) -> pd.DataFrame | None:
    """per_sample.csv of an evaluation (ids and groups as text), or None where there is none."""
    path = Path(folder) / PER_SAMPLE
    if not path.is_file():
        return None
    frame = read_table(path, dtype={"id": str, "group": str}, keep_default_na=False)
    for col in ("group", "dice"):
        if col not in frame.columns:
            raise InputError(f"{path}: missing column '{col}' (found: {', '.join(map(str, frame.columns))})")
    frame["dice"] = pd.to_numeric(frame["dice"], errors="coerce")
    return frame


def has_evaluation(folder: str | os.PathLike) -> bool:
    return (Path(folder) / METRICS).is_file()


def leakage_per_site(leakage: Mapping[str, Any]) -> dict[str, dict]:
    """The one leakage schema from either schema: the older flat one ({"sites": [...], "auc_before": ...,
    "auc_after": ...}, one probe over all patched sites) becomes one entry named after its sites."""
    if any("auc" in k.lower() and isinstance(v, (int, float)) and not isinstance(v, bool)
           for k, v in leakage.items()):
        sites = leakage.get("sites")
        name = ", ".join(map(str, sites)) if isinstance(sites, list) and sites else str(leakage.get("site", "latent"))
        entry = {k: v for k, v in leakage.items() if k not in ("sites", "site")}
        return {name: entry}
    return {str(k): dict(v) for k, v in leakage.items() if isinstance(v, dict)}


def read_leakage(root: str | os.PathLike) -> dict[str, dict] | None:
    path = Path(root) / LEAKAGE
    return leakage_per_site(read_json_object(path)) if path.is_file() else None


def read_use(root: str | os.PathLike) -> dict[str, dict] | None:
    """use.json as {model label: entry}, or None where the run has none."""
    path = Path(root) / USE
    if not path.is_file():
        return None
    return {str(k): v for k, v in read_json_object(path).items() if isinstance(v, dict)}


def read_optional_object(root: str | os.PathLike, name: str) -> dict | None:
    """A JSON object file of the run (frozen_check.json, paired.json), or None where there is none."""
    path = Path(root) / name
    return read_json_object(path) if path.is_file() else None


def read_history(root: str | os.PathLike) -> pd.DataFrame | None:
    path = Path(root) / HISTORY
    return read_table(path) if path.is_file() else None
