"""`applefair evaluate` as a function: one model (optionally patched) on one split.

Writes one run folder (atomically): config.yaml, metrics.json, per_sample.csv, leakage.json (three
fresh probes at every decoder input) and use.json (does the output depend on the group statistics of
those inputs?) for the model as given; with a patch also deployed/ (the model with the patch switched
off), paired.json and frozen_check.json; with `save_predictions`, every predicted mask under
predictions/ (and deployed/predictions/); then the report. The metric convention (applefair,
fairseg, fairmedfm) is recorded in metrics.json and paired.json.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
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
from applefair.metrics.leakage import ALL_PROBES
from applefair.metrics.segmentation import METRICS
from applefair.metrics.use import PERMUTATIONS, STATISTICS, use_measure
from applefair.models.registry import ModelSpec, load_model_dir
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
    probe: Literal["decoder", "patched"] = "decoder"  # probe every decoder input, or only the patched site(s)
    use: bool = True  # the use measure (use.json)
    use_statistic: Literal[STATISTICS] = "map"  # what the counterfactual moves: mean maps or channel means
    use_permutations: int = Field(PERMUTATIONS, ge=0)  # relabelings that give the measure's null level
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


def decoder_inputs(spec: ModelSpec, patched: Sequence[str] = ()) -> dict[str, str]:
    """{site: role} of every input the decoder receives: the skips (shallow to deep, role `skip`), the model's
    default site (`bottleneck`), and the patched sites (`perturbed`, wherever they are)."""
    roles = {s: "skip" for s in spec.skip_sites}
    if spec.site:
        roles[spec.site] = "bottleneck"
    roles.update({s: "perturbed" for s in patched})
    return roles


def evaluate_change(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec, *,
                    deployed: nn.Module | None = None, sites: Sequence[str] | Mapping[str, str] = (),
                    bootstrap: int = 1000, seed: int = 0, level: float = 0.95, leakage: bool = True, folds: int = 5,
                    use: bool = False, use_statistic: str = "map", use_permutations: int = PERMUTATIONS,
                    label: str = "model", **score_kw) -> Evaluation:
    """`model` on `dataset` beside the deployed model it replaces: `deployed` when that is a separate module
    (a retrained copy's original), else, for a patched model, the same model with its perturbers off.

    Both are scored in one pass each, capturing `sites` (module paths of the segmentor, or {path: role}, e.g.
    `decoder_inputs(spec, patched)`) for the three leakage probes (maps kept for the spatial one); the result
    holds both frames with CIs, the paired change and leakage before/after. `use`: the use measure of each
    model at the same sites, under `label` (the model) and `deployed`."""
    roles = dict(sites) if isinstance(sites, Mapping) else {}
    sites = list(sites)
    keep = leakage and bool(sites)
    capture_after = site_modules(model, sites)
    if deployed is not None:
        before = score(deployed, dataset, groups, capture=site_modules(deployed, sites), keep_maps=keep, **score_kw)
    elif isinstance(model, PatchedSegmentor):
        with model.disabled():
            before = score(model, dataset, groups, capture=capture_after, keep_maps=keep, **score_kw)
    else:
        before = None
    after = score(model, dataset, groups, capture=capture_after, keep_maps=keep, **score_kw)
    for scored in (before, after):
        if scored is not None:
            scored.roles = roles
    ev = summarise(after, before, bootstrap=bootstrap, seed=seed, level=level, leakage=leakage, probes=ALL_PROBES,
                   folds=folds)
    if use and sites:
        kw = {"statistic": use_statistic, "permutations": use_permutations, "resamples": bootstrap, "seed": seed,
              "level": level, "roles": roles, "convention": score_kw.get("convention"),
              "batch_size": score_kw.get("batch_size", 32), "device": score_kw.get("device")}
        ev.use = {}
        if deployed is not None:
            ev.use["deployed"] = use_measure(deployed, dataset, groups, site_modules(deployed, sites), **kw)
        elif isinstance(model, PatchedSegmentor):
            with model.disabled():
                ev.use["deployed"] = use_measure(model, dataset, groups, capture_after, **kw)
        ev.use[label] = use_measure(model, dataset, groups, capture_after, **kw)
    return ev


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
    patched_sites = list(patched.sites) if patched is not None else []
    sites = decoder_inputs(mspec, patched_sites)
    if st.probe == "patched":
        sites = {s: r for s, r in sites.items() if s in patched_sites or (not patched_sites and r == "bottleneck")}
    try:
        ev = evaluate_change(patched if patched is not None else net, ds, spec,
                             sites=sites if st.leakage or st.use else {}, bootstrap=st.bootstrap, seed=st.seed,
                             level=st.level, leakage=st.leakage, folds=st.folds, use=st.use,
                             use_statistic=st.use_statistic, use_permutations=st.use_permutations,
                             label="patched" if patched is not None else "model",
                             metrics=metrics, nsd_tolerance=st.nsd_tolerance,
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
        if ev.use is not None:
            runfolder.write_use(stage, ev.use)
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


__all__ = ["EvaluateResult", "EvaluateSettings", "decoder_inputs", "evaluate_change", "fit_groups", "run_evaluation"]
