"""`applefair mitigate` as a function: one run folder from (data, deployed model, attribute).

APPLE (or a baseline, `--method NAME`) is fitted through `Method.fit`, the one way every method
runs; the run folder fills up as training goes (a checkpoint per epoch, so `resume` can continue
after a kill), every file in it is written atomically, and the test split is evaluated through the
same path as `applefair evaluate` (per-group metrics with CIs, the paired change against the
deployed model, three fresh probes at every decoder input, the use measure of both models, and the
outcome in one sentence). The deployed model's folder is only read, and its files and weights are
hashed before and after to prove it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from applefair.apple.config import AppleConfig
from applefair.apple.patch import save_patch
from applefair.baselines import Budget, FitResult, Method, get_method
from applefair.data import load_dataset
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed, runfolder
from applefair.engine.device import resolve_device
from applefair.engine.runfolder import CHECKPOINT
from applefair.errors import InputError
from applefair.metrics.evaluate import Evaluation, score
from applefair.metrics.frame import MetricFrame
from applefair.metrics.outcome import Outcome, classify_outcome
from applefair.models.registry import ModelSpec
from applefair.models.sites import find_module
from applefair.report import write_reports
from applefair.workflows._common import FrozenCheck, check_dims, logged, provenance
from applefair.workflows.evaluate import decoder_inputs, evaluate_change

log = logging.getLogger("applefair")
BOOTSTRAP = 1000  # resamples of the test split's confidence intervals


@dataclass
class MitigationResult:
    """What a mitigate run produced (all of it is also in the run folder)."""

    method: str
    fit: FitResult
    test: Evaluation  # the mitigated model beside the deployed one, on the test split
    val: MetricFrame  # the mitigated model on the validation split
    check: dict  # frozen_check.json
    export: dict | None = None
    outcome: Outcome | None = None  # which outcome happened (`metrics.outcome.classify_outcome`)


def _prepare_out(out: Path, model: Path, resume: bool, overwrite: bool) -> None:
    out_r, model_r = out.resolve(), model.resolve()
    if out_r == model_r or model_r in out_r.parents:
        raise InputError(f"--out {out}: inside the deployed model folder {model}; the deployed model is never "
                         "written to, choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (resume and (out / CHECKPOINT).is_file()):
        if resume:
            raise InputError(f"--out {out}: --resume given but there is no {CHECKPOINT} to resume from")
        if not overwrite:
            raise InputError(f"--out {out}: folder exists and is not empty (use --resume to continue a run "
                             "or --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def fit_method(impl: Method, net: nn.Module, spec: ModelSpec, split: dict[str, SegmentationDataset],
               groups: GroupSpec, cfg: AppleConfig, method_options: dict | None = None, *, quiet: bool = True,
               run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
    """Fit a method through `Method.fit` with the budget `cfg` implies (epochs, batch size, seed, tolerance):
    APPLE gets all of `cfg`, a baseline `method_options`. The step `mitigate` and `demo` share."""
    budget = Budget(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, tolerance=cfg.tolerance)
    options = cfg.to_dict() if impl.name == "apple" else (method_options or {})
    return impl.fit(net, spec, split["train"], split["val"], groups, budget, options, quiet=quiet, run_dir=run_dir,
                    resume=resume)


def write_patch(folder: str | os.PathLike, fit: FitResult, spec: ModelSpec, groups: GroupSpec, cfg: AppleConfig,
                deployed_hash: str) -> None:
    """patch.safetensors: the perturbers, and in its header what they were fitted to (the deployed weights'
    hash, the model, the groups, the options, the selected epoch)."""
    save_patch(Path(folder) / runfolder.PATCH, fit.model,
               {"model": spec.name, "model_args": spec.args, "groups": groups.to_dict(), "apple": cfg.to_dict(),
                "selected_epoch": fit.selected_epoch, "deployed_weights_sha256": deployed_hash})


def run_mitigation(data: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
                   groups: GroupSpec, cfg: AppleConfig, method: str = "apple", method_options: dict | None = None,
                   resume: bool = False, overwrite: bool = False, export: bool = False, quiet: bool = False,
                   device: str = "auto", probe: str = "decoder", use: bool = True) -> MitigationResult:
    """Mitigate the deployed model in folder `model` on the dataset `data`; write the run folder `out`.

    `device`: auto, cpu, cuda or cuda:N; the deployed model, the perturbers and the discriminator
    (or the baseline's models) all train and evaluate there. `probe`: `decoder` (every decoder input) or
    `patched` (the patched site(s) only); `use`: the use measure of the deployed and mitigated models."""
    from applefair.models.registry import load_model_dir

    if method != "apple" and resume:
        raise InputError("--resume is only supported for --method apple")
    if probe not in ("decoder", "patched"):
        raise InputError(f"--probe {probe}: expected 'decoder' (every decoder input) or 'patched'")
    impl = get_method(method)  # an unknown method is bad input before anything is read
    out, model = Path(out), Path(model)
    out = distributed.run_folder(out, resume)  # under torchrun, ranks > 0 write a private scratch copy
    frame = load_dataset(data)
    groups.fit(frame)
    net, spec = load_model_dir(model)
    net.to(resolve_device(device))
    for site in cfg.sites:  # an unknown site is bad input: say so before anything is written
        find_module(net, site)
    created = not out.exists() or (not resume and overwrite)
    _prepare_out(out, model, resume, overwrite)
    try:
        with logged(out):
            return _run(frame, net, spec, model, out, groups, cfg, impl, method_options or {}, resume, export, quiet,
                        probe, use)
    except InputError:
        if created and not (out / CHECKPOINT).is_file():  # bad input: leave no half-written folder
            shutil.rmtree(out, ignore_errors=True)
        raise


def probe_sites(spec: ModelSpec, fit: FitResult, patched: bool, probe: str = "decoder") -> dict[str, str]:
    """{site: role} the test split is probed at: every decoder input (`probe="decoder"`), or the patched
    site(s) only; none where the method's model has no single latent (subgroup models)."""
    if fit.latent_sites is None:
        return {}
    if probe == "patched":
        return {s: "perturbed" if patched else "bottleneck" for s in fit.latent_sites}
    return decoder_inputs(spec, fit.latent_sites if patched else ())


def _run(frame, net, spec, model: Path, out: Path, groups: GroupSpec, cfg: AppleConfig, impl, method_options: dict,
         resume: bool, export: bool, quiet: bool, probe: str = "decoder", use: bool = True) -> MitigationResult:
    method = impl.name
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if len(split[s]) == 0:
            raise InputError(f"{frame.attrs.get('source', 'manifest')}: split '{s}' has no rows "
                             "(APPLE trains on train and selects on val)")
    check_dims(spec, split["train"], frame.attrs.get("source", "manifest"))  # 2-D model, 3-D data (or reverse)
    frozen = FrozenCheck(net, folder=model)
    config = provenance("mitigate", method=method, model=str(model), model_name=spec.name,
                        site=cfg.sites or [spec.site], device=str(next(net.parameters()).device),
                        groups=groups.to_dict(), apple=cfg.to_dict(), method_options=method_options)
    runfolder.write_config(out, config)
    log.info("mitigate %s", config)
    fit = fit_method(impl, net, spec, split, groups, cfg, method_options, quiet=quiet, run_dir=out, resume=resume)
    patched = fit.model if method == "apple" else None
    if patched is not None:
        write_patch(out, fit, spec, groups, cfg, frozen.hash_before)
    runfolder.write_history(out, fit.history)
    if patched is not None:
        _plot_curves(out / runfolder.CURVES, fit.history)
    label = "patched" if patched is not None else "mitigated"
    test = evaluate_change(fit.model, split["test"], groups, deployed=net,
                           sites=probe_sites(spec, fit, patched is not None, probe), bootstrap=BOOTSTRAP,
                           seed=cfg.seed, use=use, label=label)
    info = {"split": "test", "group_spec": groups.to_dict(), "method": method}
    runfolder.write_evaluation(out, test.frame.to_dict(**info), test.after.per_sample)
    runfolder.write_evaluation(out / runfolder.DEPLOYED, test.before_frame.to_dict(**{**info, "method": None}),
                               test.before.per_sample)
    runfolder.write_paired(out, test.paired)
    if test.leakage is not None:
        runfolder.write_leakage(out, test.leakage)
    if test.use is not None:
        runfolder.write_use(out, test.use)
    val = score(fit.model, split["val"], groups)
    runfolder.write_evaluation(out / runfolder.VALIDATION, val.frame().to_dict(split="val", method=method),
                               val.per_sample)
    result = MitigationResult(method, fit, test, val.frame(), {},
                              outcome=classify_outcome(test.paired, test.leakage, test.use, fit.selected_epoch, label))
    if export and patched is not None:
        result.export = _export(patched, split["test"], out)
    if patched is not None:
        patched.remove()
    result.check = frozen.verify(fit.deployed, **(fit.extra if method == "apple" else {}))
    runfolder.write_frozen_check(out, result.check)
    if distributed.is_main():
        write_reports(out)  # report.html, report.md, tables/, plots/
    return result


def _export(patched, dataset: SegmentationDataset, out: Path) -> dict:
    from applefair.apple.export import check_export, export_onnx, export_torchscript

    example = torch.stack([dataset[i]["image"] for i in range(min(2, len(dataset)))])
    patched = patched.cpu()  # exported files are CPU artefacts, portable to any runtime
    ts = export_torchscript(patched, example, out / runfolder.TORCHSCRIPT)
    info: dict = {"torchscript": ts.name}
    try:
        onnx_path = export_onnx(patched, example, out / runfolder.ONNX)
        info["onnx"] = onnx_path.name
    except Exception as exc:  # noqa: BLE001 - ONNX support depends on optional packages and the model's ops
        log.warning("ONNX export failed: %s", exc)
        info["onnx_error"] = str(exc).splitlines()[0]
        onnx_path = None
    try:
        info.update(check_export(patched, example, ts, onnx_path))
    except ImportError as exc:
        info["onnx_check_error"] = str(exc)
    runfolder.write_record(out / runfolder.EXPORT, info)
    return info


def _plot_curves(path: Path, history: list[dict]) -> None:
    """Validation Dice / ES-Dice, probe AUC and discriminator accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from applefair.engine.io import atomic_path

    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for col, label in (("val_dice", "val Dice"), ("val_es_dice", "val ES-Dice")):
        axes[0].plot(h["epoch"], h[col], marker="o", label=label)
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].plot(h["epoch"], h["probe_auc"], marker="o", label="fresh probe AUC (val)")
    if "d_acc" in h:
        axes[1].plot(h["epoch"], h["d_acc"], marker="x", label="D_p balanced acc (train)")
    axes[1].axhline(0.5, color="grey", lw=0.5)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(0.3, 1.02)
    axes[1].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
