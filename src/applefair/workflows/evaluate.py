"""`applefair evaluate` as a function: one model (optionally patched) on one split.

Writes one run folder (atomically): config.yaml, metrics.json, per_sample.csv, leakage.json for
the model as given; with a patch also deployed/ (the model with the patch switched off),
paired.json and frozen_check.json; with `save_predictions`, every predicted mask under
predictions/ (and deployed/predictions/); then the report. The metric convention (applefair,
fairseg, fairmedfm) is recorded in metrics.json and paired.json.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from torch import nn

from applefair.apple.patch import PatchedSegmentor, attach
from applefair.data import load_dataset
from applefair.data.groups import GroupSpec, build_group_spec
from applefair.data.manifest import SegmentationDataset
from applefair.data.writers import save_predictions
from applefair.engine import distributed, runfolder
from applefair.engine.config import Device, Settings
from applefair.engine.device import resolve_device
from applefair.errors import InputError
from applefair.metrics.conventions import get_convention
from applefair.metrics.evaluate import Evaluation, score, summarise
from applefair.metrics.leakage import PROBES
from applefair.metrics.segmentation import METRICS
from applefair.models.registry import load_model_dir
from applefair.models.sites import site_modules
from applefair.report import write_reports
from applefair.workflows._common import FrozenCheck, check_dims, provenance


class EvaluateSettings(Settings):
    """Settings of `applefair evaluate` (YAML keys for --config; command-line options override them)."""

    data: str | None = None
    model: str | None = None
    patch: str | None = None
    attribute: list[str] = Field(default_factory=list)
    groups: str | None = None
    split: Literal["train", "val", "test"] = "test"
    format: str | None = None  # dataset layout (csv, fairseg, tusc, fives, nifti); detected when None
    options: dict[str, str] = Field(default_factory=dict)  # reader options (see applefair.data.formats)
    size: int | None = Field(None, gt=0)  # resize every sample to size x size (as the model was trained)
    metrics: str = ",".join(METRICS)
    convention: str = "applefair"  # metric convention: applefair, fairseg, fairmedfm (docs/metrics.md)
    nsd_tolerance: float | None = Field(None, ge=0)  # None: the convention's (applefair 2 px, fairseg 5 px)
    save_predictions: bool = False  # write every predicted mask (PNG; named by sample id) under predictions/
    strict: bool = True  # refuse a patch fitted to other weights than the model's (else a warning)
    bootstrap: int = Field(1000, ge=0)
    level: float = Field(0.95, gt=0, lt=1)
    leakage: bool = True
    folds: int = Field(5, ge=2)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    device: Device = "auto"

    @property
    def metric_names(self) -> tuple[str, ...]:
        names = tuple(m.strip() for m in self.metrics.split(",") if m.strip())
        bad = [m for m in names if m not in METRICS]
        if bad or not names:
            raise InputError(f"--metrics: unknown metric(s) {bad} (expected some of {', '.join(METRICS)})")
        return names


@dataclass
class EvaluateResult:
    evaluation: Evaluation
    metrics: dict  # metrics.json content
    groups: GroupSpec
    frozen_check: dict | None = None
    warnings: tuple[str, ...] = ()


def fit_groups(spec: GroupSpec, frame) -> list[str]:
    """Fit the group spec on the data; the small-group warnings it raises, as text (metrics.json keeps them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec.fit(frame)
    notes = [str(w.message) for w in caught if type(w.message).__name__ == "SmallGroupWarning"]
    for w in caught:
        if type(w.message).__name__ != "SmallGroupWarning":
            warnings.warn(w.message, stacklevel=2)
    return notes


def evaluate_change(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec, *,
                    deployed: nn.Module | None = None, sites: Sequence[str] = (), bootstrap: int = 1000, seed: int = 0,
                    level: float = 0.95, leakage: bool = True, folds: int = 5, **score_kw) -> Evaluation:
    """`model` on `dataset` beside the deployed model it replaces: `deployed` when that is a separate module
    (a retrained copy's original), else, for a patched model, the same model with its perturbers off.

    Both are scored in one pass each, capturing `sites` (module paths of the segmentor) for the leakage
    probes; the result holds both frames with CIs, the paired change and leakage before/after."""
    capture_after = site_modules(model, sites)
    if deployed is not None:
        before = score(deployed, dataset, groups, capture=site_modules(deployed, sites), **score_kw)
    elif isinstance(model, PatchedSegmentor):
        with model.disabled():
            before = score(model, dataset, groups, capture=capture_after, **score_kw)
    else:
        before = None
    after = score(model, dataset, groups, capture=capture_after, **score_kw)
    return summarise(after, before, bootstrap=bootstrap, seed=seed, level=level, leakage=leakage, probes=PROBES,
                     folds=folds)


def run_evaluation(st: EvaluateSettings, out: str | os.PathLike, *, overwrite: bool = False,
                   quiet: bool = True) -> EvaluateResult:
    """Evaluate, write the run folder, and return what was written."""
    for key in ("data", "model"):
        if getattr(st, key) is None:
            raise InputError(f"--{key} is required (on the command line or as '{key}' in --config)")
    metrics = st.metric_names
    get_convention(st.convention)  # an unknown convention is bad input before anything is read
    device = resolve_device(st.device)
    frame = load_dataset(st.data, format=st.format, **st.options)
    net, mspec = load_model_dir(st.model)
    net.to(device).eval()
    patched = attach(net, st.patch, strict=st.strict).to(device) if st.patch is not None else None
    spec = build_group_spec(st.attribute, st.groups, getattr(patched, "groups", None) if patched else None)
    notes = fit_groups(spec, frame)
    ds = SegmentationDataset(frame, spec, st.split, **({"size": st.size} if st.size else {}))
    if len(ds) == 0:
        raise InputError(f"{st.data}: split '{st.split}' has no rows")
    check_dims(mspec, ds, st.data)  # a 2-D model on volumes (or the other way round) is bad input
    check = FrozenCheck(net)
    sites = list(patched.sites) if patched is not None else ([mspec.site] if mspec.site else [])
    try:
        ev = evaluate_change(patched if patched is not None else net, ds, spec, sites=sites if st.leakage else (),
                             bootstrap=st.bootstrap, seed=st.seed, level=st.level, leakage=st.leakage,
                             folds=st.folds, metrics=metrics, nsd_tolerance=st.nsd_tolerance,
                             convention=st.convention, keep_predictions=st.save_predictions,
                             batch_size=st.batch_size, device=device, quiet=quiet)
        frozen = check.verify()
    finally:
        if patched is not None:
            patched.remove()
    info = {"split": st.split, "group_spec": spec.to_dict(), "model": str(st.model), "patch": st.patch}
    result = EvaluateResult(ev, ev.frame.to_dict(**info, **({"warnings": notes} if notes else {})), spec,
                            frozen if patched is not None else None, tuple(notes))
    config = provenance("evaluate", **st.to_dict(), group_spec=spec.to_dict())
    with distributed.rank_stage(out, overwrite=overwrite) as stage:
        runfolder.write_config(stage, config)
        runfolder.write_evaluation(stage, result.metrics, ev.after.per_sample)
        if ev.leakage is not None:
            runfolder.write_leakage(stage, ev.leakage)
        if patched is not None:
            runfolder.write_evaluation(stage / runfolder.DEPLOYED, ev.before_frame.to_dict(**{**info, "patch": None}),
                                       ev.before.per_sample)
            runfolder.write_paired(stage, ev.paired)
            runfolder.write_frozen_check(stage, frozen)
        if st.save_predictions:
            spacing = ds.spacings()  # volumes: each mask with its own voxel spacing
            save_predictions(stage / runfolder.PREDICTIONS, ev.after.per_sample["id"], ev.after.predictions,
                             spacing=spacing)
            if ev.before is not None:
                save_predictions(stage / runfolder.DEPLOYED / runfolder.PREDICTIONS, ev.before.per_sample["id"],
                                 ev.before.predictions, spacing=spacing)
        write_reports(stage)  # report.html, report.md, tables/, plots/
    return result


__all__ = ["EvaluateResult", "EvaluateSettings", "evaluate_change", "fit_groups", "run_evaluation"]
