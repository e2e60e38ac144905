"""The evaluation run behind `applefair evaluate`: one model (optionally patched) on one split.

Writes into a run folder (atomically, via `staged_dir`):
  config.yaml, metrics.json, per_sample.csv, leakage.json           (the model as given)
  deployed/metrics.json, deployed/per_sample.csv, paired.json,
  frozen_check.json                                                  (only with a patch)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from applefair.data import load_dataset
from applefair.data.groups import build_group_spec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.device import resolve_device
from applefair.engine.io import json_safe, staged_dir, state_dict_hash, write_csv, write_json, write_yaml
from applefair.errors import InputError
from applefair.metrics.compare import aggregate_comparisons, aggregate_seeds, format_mean_std, paired_comparison
from applefair.metrics.evaluate import score_and_capture
from applefair.metrics.fairness import fairness_summary
from applefair.metrics.leakage import PROBES, site_leakage
from applefair.metrics.segmentation import METRICS


@dataclass
class EvalOptions:
    split: str = "test"
    metrics: tuple[str, ...] = METRICS
    nsd_tolerance: float = 2.0
    bootstrap: int = 1000
    level: float = 0.95
    leakage: bool = True
    probes: tuple[str, ...] = PROBES
    folds: int = 5
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    class_names: list[str] | None = field(default=None)
    format: str | None = None  # dataset layout (csv, fairseg, tusc, fives, nifti); detected when None
    options: dict = field(default_factory=dict)  # reader options (see applefair.data.formats)
    size: int | None = None  # resize every sample to size x size (as the model was trained)


def load_frame(data: str | os.PathLike, format: str | None = None, options: dict | None = None) -> pd.DataFrame:
    """The dataset as a manifest frame, from a manifest or any supported dataset layout."""
    return load_dataset(data, format=format, **(options or {}))


def run_evaluation(data: str | os.PathLike, model_dir: str | os.PathLike, out: str | os.PathLike, *,
                   patch: str | os.PathLike | None = None, attributes: Sequence[str] = (),
                   groups: str | None = None, opts: EvalOptions | None = None, overwrite: bool = False,
                   quiet: bool = True) -> dict:
    """Evaluate, write the run folder, and return {'metrics', 'leakage', 'paired'?, 'frozen_check'?}."""
    from applefair.apple.patch import attach
    from applefair.engine.runinfo import run_info
    from applefair.models.registry import load_model_dir
    from applefair.report import write_reports

    opts = opts or EvalOptions()
    bad = [m for m in opts.metrics if m not in METRICS]
    if bad or not opts.metrics:
        raise InputError(f"--metrics: unknown metric(s) {bad} (expected some of {', '.join(METRICS)})")
    if opts.bootstrap < 0 or not 0 < opts.level < 1:
        raise InputError(f"--bootstrap {opts.bootstrap} / --level {opts.level}: expected >= 0 and in (0, 1)")
    device = resolve_device(opts.device)
    frame = load_frame(data, opts.format, opts.options)
    net, mspec = load_model_dir(model_dir)
    net.to(device).eval()
    patched = attach(net, patch).to(device) if patch is not None else None
    spec = build_group_spec(attributes, groups, getattr(patched, "groups", None) if patched else None)
    with warnings.catch_warnings(record=True) as caught:  # small groups: reported in metrics.json and by the CLI
        warnings.simplefilter("always")
        spec.fit(frame)
    notes = [str(w.message) for w in caught if type(w.message).__name__ == "SmallGroupWarning"]
    for w in caught:
        if type(w.message).__name__ != "SmallGroupWarning":
            warnings.warn(w.message, stacklevel=2)
    ds = SegmentationDataset(frame, spec, opts.split, **({"size": opts.size} if opts.size else {}))
    if len(ds) == 0:
        raise InputError(f"{data}: split '{opts.split}' has no rows")
    hash_before = state_dict_hash(net)
    sites = list(patched.sites) if patched is not None else ([mspec.site] if mspec.site else [])
    kw = dict(metrics=opts.metrics, class_names=opts.class_names, nsd_tolerance=opts.nsd_tolerance,
              batch_size=opts.batch_size, device=device, quiet=quiet)
    summarise = dict(bootstrap=opts.bootstrap, seed=opts.seed, level=opts.level)
    result: dict = {}
    if patched is not None:
        patched.enabled = False
        before_df, lat_before = score_and_capture(patched, ds, spec, sites=sites if opts.leakage else (), **kw)
        patched.enabled = True
        scores, lat_after = score_and_capture(patched, ds, spec, sites=sites if opts.leakage else (), **kw)
        before = fairness_summary(before_df, spec.attribute, spec.groups, **summarise)
        result["paired"] = paired_comparison(before_df, scores, spec.groups, resamples=opts.bootstrap,
                                             seed=opts.seed, level=opts.level)
    else:
        scores, lat_before = score_and_capture(net, ds, spec, sites=sites if opts.leakage else (), **kw)
        lat_after = {}
    result["metrics"] = fairness_summary(scores, spec.attribute, spec.groups, **summarise)
    result["metrics"].update(split=opts.split, group_spec=spec.to_dict(), model=str(model_dir),
                             patch=str(patch) if patch else None)
    if notes:
        result["metrics"]["warnings"] = notes
    if opts.leakage:
        result["leakage"] = {}
        for s in sites:
            entry = site_leakage(lat_before[s], lat_after.get(s), ds.group_ids, probes=opts.probes,
                                 folds=opts.folds, seed=opts.seed, resamples=opts.bootstrap, level=opts.level)
            entry["n_per_group"] = {spec.name(int(k)): v for k, v in entry["n_per_group"].items()}
            result["leakage"][s] = {"attribute": spec.attribute, **entry}
    hash_after = state_dict_hash(net)
    if hash_after != hash_before:
        raise RuntimeError("the deployed model's weights changed during evaluation")
    if patched is not None:
        result["frozen_check"] = {"hash_before": hash_before, "hash_after": hash_after, "unchanged": True}
    config = {"command": "evaluate", "data": str(data), "model": str(model_dir), "patch": str(patch) if patch else None,
              "attributes": list(attributes), "groups": groups, "group_spec": spec.to_dict(), **asdict(opts),
              "run": run_info()}
    with staged_dir(out, overwrite=overwrite) as stage:
        write_yaml(stage / "config.yaml", json_safe(config))
        write_json(stage / "metrics.json", json_safe(result["metrics"]))
        write_csv(stage / "per_sample.csv", scores)
        if opts.leakage:
            write_json(stage / "leakage.json", json_safe(result["leakage"]))
        if patched is not None:
            before.update(split=opts.split, group_spec=spec.to_dict(), model=str(model_dir), patch=None)
            write_json(stage / "deployed" / "metrics.json", json_safe(before))
            write_csv(stage / "deployed" / "per_sample.csv", before_df)
            write_json(stage / "paired.json", json_safe(result["paired"]))
            write_json(stage / "frozen_check.json", result["frozen_check"])
        write_reports(stage)  # report.html, report.md, tables/, plots/
    if patched is not None:
        patched.remove()
    return result


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


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
        if not (r / "metrics.json").is_file():
            raise InputError(f"{r}: no metrics.json (expected a folder written by applefair evaluate)")
        metrics.append(_read_json(r / "metrics.json"))
        if (r / "leakage.json").is_file():
            leak.append(_read_json(r / "leakage.json"))
        if (r / "paired.json").is_file():
            paired.append(_read_json(r / "paired.json"))
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
