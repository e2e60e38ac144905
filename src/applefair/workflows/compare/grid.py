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
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from applefair.baselines import get_method
from applefair.baselines.base import Budget, FitResult
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.engine.io import staged_dir, state_dict_hash, write_json
from applefair.errors import InputError, OutputError
from applefair.metrics.evaluate import predict_scores
from applefair.metrics.fairness import fairness_summary
from applefair.metrics.leakage import pool_latent, probe_auc
from applefair.models.registry import create_segmentor, load_model_dir, save_model_dir
from applefair.models.sites import find_module
from applefair.training.erm import TrainConfig, train_segmentor
from applefair.workflows.compare.cells import (
    DEPLOYED,
    cell_dir,
    cell_key,
    plan,
    read_json_or_none,
    read_result,
    write_cell,
)
from applefair.workflows.compare.settings import CompareSettings, DatasetSpec, SegmentorSpec
from applefair.workflows.compare.table import write_tables

log = logging.getLogger("applefair")


def prepare_dataset(ds: DatasetSpec, root: Path, out: Path) -> tuple[pd.DataFrame, GroupSpec]:
    """Read (or first generate) a dataset and fit its group spec."""
    if ds.synthetic is not None:
        from applefair.data.synthetic import generate

        folder = out / "data" / ds.name
        if not (folder / "manifest.csv").is_file():
            allowed = set(inspect.signature(generate).parameters) - {"out_dir"}
            bad = sorted(set(ds.synthetic) - allowed)
            if bad:
                raise InputError(f"dataset '{ds.name}': synthetic key(s) {', '.join(bad)} not known "
                                 f"(expected: {', '.join(sorted(allowed))})")
            with staged_dir(folder, overwrite=True) as stage:
                generate(stage, **ds.synthetic)
        manifest = folder / "manifest.csv"
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
    info = read_json_or_none(folder / "train.json")
    if not (folder / "model.yaml").is_file() or info is None or info.get("key") != key:
        net, spec = create_segmentor(seg.name, tiny=seg.tiny, seed=seed, **seg.args)
        d = settings.deploy
        cfg = TrainConfig(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay,
                          seed=seed, augment=d.augment, device=str(device))
        started = time.perf_counter()
        train_segmentor(net, split["train"], split["val"], groups, cfg, quiet=quiet)
        with staged_dir(folder, overwrite=True) as stage:
            save_model_dir(stage, net, spec)
            write_json(stage / "train.json", {"seconds": time.perf_counter() - started, "config": d.model_dump(),
                                              "seed": seed, "key": key})
    net, spec = load_model_dir(folder)
    return net.to(device).eval(), spec


@torch.no_grad()
def evaluate(model: torch.nn.Module, latent_module: torch.nn.Module | None, test: SegmentationDataset,
             groups: GroupSpec, leakage: bool, seed: int) -> tuple[pd.DataFrame, dict, float]:
    """Per-sample scores, their summary, and the fresh-probe AUC on the latent the decoder sees."""
    feats: list[torch.Tensor] = []
    handle = None
    if leakage and latent_module is not None:
        handle = latent_module.register_forward_hook(
            lambda _m, _i, o: feats.append(pool_latent(o.detach().float()).cpu()))
    try:
        scores = predict_scores(model, test, groups)
    finally:
        if handle is not None:
            handle.remove()
    summary = fairness_summary(scores, groups.attribute, groups.groups)
    auc = float("nan")
    if feats and sum(len(f) for f in feats) == len(test):
        auc = probe_auc(torch.cat(feats).numpy(), test.group_ids, seed=seed)
    return scores, summary, auc


def run_cell(settings: CompareSettings, method: str, net, spec, split, groups, seed: int,
             quiet: bool) -> tuple[dict, pd.DataFrame, dict, list[dict]]:
    """Fit one method (or evaluate the deployed model) and evaluate it on the test split."""
    if method == DEPLOYED:
        scores, summary, auc = evaluate(net, find_module(net, spec.site), split["test"], groups,
                                        settings.leakage, seed)
        return ({"trainable_params": 0, "seconds": 0.0, "frozen": True, "selected_epoch": 0, "leakage_auc": auc},
                scores, summary, [])
    mspec = next(m for m in settings.methods if m.name == method)
    budget = Budget.from_dict({**settings.budget, "seed": seed})
    before = state_dict_hash(net)
    fit: FitResult = get_method(method).fit(net, spec, split["train"], split["val"], groups, budget,
                                            mspec.options, quiet=quiet)
    if state_dict_hash(net) != before:
        raise RuntimeError(f"method '{method}' changed the deployed model it was given")
    scores, summary, auc = evaluate(fit.model, fit.latent_module, split["test"], groups, settings.leakage, seed)
    record = {"trainable_params": fit.trainable_params, "seconds": fit.seconds, "frozen": fit.frozen,
              "selected_epoch": fit.selected_epoch, "leakage_auc": auc, "extra": fit.extra}
    return record, scores, summary, fit.history


def run_cells(settings: CompareSettings, root: Path, out: Path, only: Mapping[str, list] | None,
              deadline: float | None, quiet: bool, dev: torch.device, table_every_s: float | None = None) -> dict:
    """The cells of `plan(settings, only)` in this process; cells not started by `deadline` are left.

    `table_every_s`: rewrite the tables at most that often (None: never; the caller writes them)."""
    counts = {"run": 0, "skipped": 0, "failed": 0, "left": 0}
    cache: dict = {}
    deploy_errors: dict[tuple, str] = {}  # a deployed model that failed once is not retried for every method
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
            where = out / "deployed" / ds.name / seg.key / f"seed{seed}"
            try:
                net, spec = deployed_model(settings, seg, split, groups, where, seed, quiet, cell_key(settings, ds, seg,
                                                                                                   DEPLOYED, seed),
                                             device=dev)
            except InputError:
                raise
            except Exception as exc:
                deploy_errors[(ds.name, seg.key, seed)] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                raise
            res, scores, summary, history = run_cell(settings, method, net, spec, split, groups, seed, quiet)
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
