"""The comparison grid in one process: every method on every segmentor, dataset and seed, cell by cell.

Folder layout of a comparison run (`--out DIR`):

    config.yaml                              the resolved settings of the latest invocation
    data/<dataset>/manifest.csv ...          generated synthetic data (once per dataset)
    deployed/<dataset>/<segmentor>/seed<k>/  the "deployed" model (ERM from scratch), a model folder
    cells/<dataset>/<segmentor>/<method>/seed<k>/
        result.json  per_sample.csv  metrics.json  history.csv
    results.csv  summary.csv  results.md     rewritten after every cell

A cell is written atomically (built in a temporary folder, then renamed), so a killed run
leaves only finished cells; a rerun skips every cell whose result.json says "done" with the
same settings hash, and retries failed ones. `deployed` appears as a pseudo-method: the
unchanged model on the test split.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from applefair.baselines import get_method
from applefair.baselines.base import Budget
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.engine import runfolder
from applefair.engine.io import staged_dir
from applefair.engine.runfolder import read_json_or_none
from applefair.errors import InputError, OutputError
from applefair.metrics.evaluate import score
from applefair.models.registry import is_model_folder, load_model_dir, save_model_dir
from applefair.models.sites import site_modules
from applefair.training.erm import TrainConfig
from applefair.workflows._common import FrozenCheck
from applefair.workflows.compare.cells import (
    DEPLOYED,
    cell_dir,
    cell_key,
    plan,
    read_result,
    write_cell,
)
from applefair.workflows.compare.settings import CompareSettings, DatasetSpec, SegmentorSpec
from applefair.workflows.compare.table import write_tables
from applefair.workflows.evaluate import decoder_inputs
from applefair.workflows.train import build_model, train_deployed

log = logging.getLogger("applefair")


def prepare_dataset(ds: DatasetSpec, root: Path, out: Path) -> tuple[pd.DataFrame, GroupSpec]:
    """Read (or first generate) a dataset and fit its group spec."""
    if ds.synthetic is not None:
        from applefair.data.synthetic import generate

        folder = out / runfolder.DATA / ds.name
        if not (folder / runfolder.MANIFEST).is_file():
            allowed = set(inspect.signature(generate).parameters) - {"out_dir"}
            bad = sorted(set(ds.synthetic) - allowed)
            if bad:
                raise InputError(f"dataset '{ds.name}': synthetic key(s) {', '.join(bad)} not known "
                                 f"(expected: {', '.join(sorted(allowed))})")
            with staged_dir(folder, overwrite=True) as stage:
                generate(stage, **ds.synthetic)
        manifest = folder / runfolder.MANIFEST
    else:
        manifest = Path(ds.manifest)
        manifest = manifest if manifest.is_absolute() else root / manifest
    frame = read_manifest(manifest)
    groups = GroupSpec.from_dict(ds.groups if not isinstance(ds.groups, str) or ":" in ds.groups
                                 else {"attribute": ds.groups}).fit(frame)
    return frame, groups


def deployed_model(settings: CompareSettings, seg: SegmentorSpec, split: Mapping[str, SegmentationDataset],
                   groups: GroupSpec, folder: Path, seed: int, quiet: bool, key: str = "",
                   device: torch.device | str = "cpu"):
    """Load the deployed model of this (dataset, segmentor, seed), training it by ERM first if needed
    (or again, if it was trained under other settings)."""
    info = read_json_or_none(folder / runfolder.DEPLOY_INFO)
    if not is_model_folder(folder) or info is None or info.get("key") != key:
        d = settings.deploy
        cfg = TrainConfig(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay,
                          seed=seed, augment=d.augment, device=str(device))
        net, spec = build_model(seg.name, tiny=seg.tiny, args=seg.args, seed=seed)
        trained = train_deployed(net, spec, split, groups, cfg, quiet=quiet)
        with staged_dir(folder, overwrite=True) as stage:
            save_model_dir(stage, net, spec)
            runfolder.write_record(stage / runfolder.DEPLOY_INFO, {"seconds": trained.seconds, "config": d.model_dump(),
                                                                   "seed": seed, "key": key})
    net, spec = load_model_dir(folder)
    return net.to(device).eval(), spec


def run_cell(settings: CompareSettings, method: str, net, spec, split, groups, seed: int,
             quiet: bool, frozen: FrozenCheck | None = None) -> tuple[dict, pd.DataFrame, dict, list[dict]]:
    """Fit one method (or evaluate the deployed model) and evaluate it on the test split.

    `frozen`: the deployed model's hash taken when it was loaded (one per block of cells)."""
    frozen = frozen or FrozenCheck(net)
    if method == DEPLOYED:
        model, sites, fit = net, [spec.site], None
    else:
        mspec = next(m for m in settings.methods if m.name == method)
        budget = Budget.from_dict({**settings.budget, "seed": seed})
        fit = get_method(method).fit(net, spec, split["train"], split["val"], groups, budget, mspec.options,
                                     quiet=quiet)
        frozen.verify(fit.deployed)  # neither the model given nor a frozen copy inside the result changed
        model, sites = fit.model, fit.latent_sites
    # leakage: the pooled logistic probe on the latent(s) the method works on, the spatial probe at every input
    # the decoder receives (skips included), so that a cue a method leaves in a skip shows in its row
    inputs = list(decoder_inputs(spec, sites)) if settings.leakage and sites else []
    scored = score(model, split["test"], groups, capture=site_modules(model, inputs), keep_maps=bool(inputs))
    leak = {"leakage_auc": scored.probe_auc(sites, seed=seed) if inputs else math.nan}
    leak["spatial_auc"], leak["spatial_auc_site"] = scored.spatial_auc(seed=seed)
    if fit is None:
        record = {"trainable_params": 0, "seconds": 0.0, "frozen": True, "selected_epoch": 0, **leak}
        return record, scored.per_sample, scored.frame().to_dict(), []
    record = {"trainable_params": fit.trainable_params, "seconds": fit.seconds, "frozen": fit.frozen,
              "selected_epoch": fit.selected_epoch, **leak, "extra": fit.extra}
    return record, scored.per_sample, scored.frame().to_dict(), fit.history


def run_cells(settings: CompareSettings, root: Path, out: Path, only: Mapping[str, list] | None,
              deadline: float | None, quiet: bool, dev: torch.device, table_every_s: float | None = None) -> dict:
    """The cells of `plan(settings, only)` in this process; cells not started by `deadline` are left.

    `table_every_s`: rewrite the tables at most that often (None: never; the caller writes them)."""
    counts = {"run": 0, "skipped": 0, "failed": 0, "left": 0}
    cache: dict = {}
    deploy_errors: dict[tuple, str] = {}  # a deployed model that failed once is not retried for every method
    loaded: dict[tuple, tuple] = {}
    last_table = time.time()
    for seed, ds, seg, method in plan(settings, only):
        folder = cell_dir(out, ds.name, seg.key, method, seed)
        key = cell_key(settings, ds, seg, method, seed)
        old = read_result(folder)
        if old and old.get("status") == "done" and old.get("key") == key:
            counts["skipped"] += 1
            continue
        if deadline is not None and time.time() > deadline:
            counts["left"] += 1
            continue
        if ds.name not in cache:
            frame, groups = prepare_dataset(ds, root, out)
            cache = {ds.name: (groups, {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")})}
        groups, split = cache[ds.name]
        record = {"dataset": ds.name, "segmentor": seg.key, "method": method, "seed": seed, "key": key,
                  "groups": groups.to_dict(), "device": str(dev)}
        log.info("cell %s/%s/%s/seed%d", ds.name, seg.key, method, seed)
        t0 = time.time()
        try:
            if (ds.name, seg.key, seed) in deploy_errors:
                raise RuntimeError(f"deployed model could not be built: {deploy_errors[(ds.name, seg.key, seed)]}")
            block = (ds.name, seg.key, seed)
            if block not in loaded:  # one deployed model (and one hash of it) per block of cells
                where = out / runfolder.DEPLOYED / ds.name / seg.key / f"seed{seed}"
                try:
                    net, spec = deployed_model(settings, seg, split, groups, where, seed, quiet,
                                               cell_key(settings, ds, seg, DEPLOYED, seed), device=dev)
                except InputError:
                    raise
                except Exception as exc:
                    deploy_errors[block] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                    raise
                loaded = {block: (net, spec, FrozenCheck(net))}
            net, spec, frozen = loaded[block]
            res, scores, summary, history = run_cell(settings, method, net, spec, split, groups, seed, quiet, frozen)
            write_cell(folder, {**record, "status": "done", **res, "wall_seconds": time.time() - t0},
                       scores, summary, history)
            counts["run"] += 1
        except (InputError, OutputError):  # bad input, or a full / read-only disk: stop, the next cell would fail too
            raise
        except Exception as exc:  # a failing method must not stop the other cells; the table says it failed
            log.error("cell %s failed: %s", folder, exc)
            write_cell(folder, {**record, "status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip()}",
                                "traceback": traceback.format_exc(limit=8)})
            counts["failed"] += 1
        if table_every_s is not None and time.time() - last_table > table_every_s:
            write_tables(settings, out)
            last_table = time.time()
    return counts
