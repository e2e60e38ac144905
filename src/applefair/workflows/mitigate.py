"""`applefair mitigate` as a function: one run folder from (data, deployed model, attribute).

The run folder fills up as training goes (a checkpoint per epoch, so `resume` can continue
after a kill); every file in it is written atomically. The deployed model's folder is only
read, and its files are hashed before and after to prove it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch

from applefair._version import __version__
from applefair.apple.config import AppleConfig
from applefair.apple.patch import save_patch
from applefair.apple.trainer import CHECKPOINT, evaluate_patched, train_apple
from applefair.data import load_dataset
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed
from applefair.engine.io import folder_hash, state_dict_hash, write_csv, write_json, write_yaml
from applefair.engine.runinfo import run_info
from applefair.errors import InputError
from applefair.models.sites import find_module
from applefair.report import write_reports

log = logging.getLogger("applefair")


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


def run_mitigation(data: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
                   groups: GroupSpec, cfg: AppleConfig, method: str = "apple", method_options: dict | None = None,
                   resume: bool = False, overwrite: bool = False, export: bool = False, quiet: bool = False,
                   device: str = "auto") -> dict:
    """Mitigate the deployed model in folder `model` on manifest `data`; returns the run summary.

    `device`: auto, cpu, cuda or cuda:N; the deployed model, the perturbers and the discriminator
    (or the baseline's models) all train and evaluate there."""
    from applefair.models.registry import load_model_dir

    out, model = Path(out), Path(model)
    out = distributed.run_folder(out, resume)  # under torchrun, ranks > 0 write a private scratch copy
    frame = load_dataset(data)
    groups.fit(frame)
    net, spec = load_model_dir(model)
    net.to(distributed.resolve_device(device))
    for site in cfg.sites:  # an unknown site is bad input: say so before anything is written
        find_module(net, site)
    created = not out.exists() or (not resume and overwrite)
    _prepare_out(out, model, resume, overwrite)
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(frame, net, spec, model, out, groups, cfg, method, method_options or {}, resume, export, quiet)
    except InputError:
        if created and not (out / CHECKPOINT).is_file():  # bad input: leave no half-written folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _run(frame, net, spec, model: Path, out: Path, groups: GroupSpec, cfg: AppleConfig, method: str,
         method_options: dict, resume: bool, export: bool, quiet: bool) -> dict:
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if len(split[s]) == 0:
            raise InputError(f"{frame.attrs.get('source', 'manifest')}: split '{s}' has no rows "
                             "(APPLE trains on train and selects on val)")
    model_hash, weights_hash = folder_hash(model), state_dict_hash(net)
    config = {"command": "mitigate", "argv": sys.argv, "applefair": __version__, "torch": torch.__version__,
              "method": method, "model": str(model), "model_name": spec.name, "site": cfg.sites or [spec.site],
              "device": str(next(net.parameters()).device),
              "groups": groups.to_dict(), "apple": cfg.to_dict(), "method_options": method_options,
              "run": run_info()}
    write_yaml(out / "config.yaml", config)
    log.info("mitigate %s", config)
    if method != "apple":
        result = _run_baseline(net, spec, split, groups, cfg, method, method_options, out, quiet)
    else:
        patched, history, check = train_apple(net, spec.site, split["train"], split["val"], groups, cfg,
                                              quiet=quiet, head=spec.head, run_dir=out, resume=resume)
        save_patch(out / "patch.safetensors", patched,
                   {"model": spec.name, "model_args": spec.args, "groups": groups.to_dict(), "apple": cfg.to_dict(),
                    "selected_epoch": check["selected_epoch"], "deployed_weights_sha256": weights_hash})
        write_csv(out / "history.csv", pd.DataFrame(history))
        _plot_curves(out / "curves.png", history)
        result = _evaluate(patched, split, groups, cfg.seed, out)
        result["selected_epoch"] = check["selected_epoch"]
        if export:
            result["export"] = _export(patched, split["test"], out)
        patched.remove()
    check = {"deployed_weights_sha256_before": weights_hash, "deployed_weights_sha256_after": state_dict_hash(net),
             "model_folder_sha256_before": model_hash, "model_folder_sha256_after": folder_hash(model)}
    check["unchanged"] = (check["deployed_weights_sha256_before"] == check["deployed_weights_sha256_after"]
                          and check["model_folder_sha256_before"] == check["model_folder_sha256_after"])
    write_json(out / "frozen_check.json", check)
    result["check"] = check
    if distributed.is_main():
        write_reports(out)  # report.html, report.md, tables/, plots/
    return result


def _evaluate(patched, split: dict, groups: GroupSpec, seed: int, out: Path) -> dict:
    """Test and val metrics of the patched model, the deployed model's test metrics, test leakage."""
    result: dict = {}
    for name, sub in (("test", ""), ("val", "val")):
        summary, auc, scores = evaluate_patched(patched, split[name], groups, seed)
        folder = out / sub if sub else out
        write_json(folder / "metrics.json", summary)
        write_csv(folder / "per_sample.csv", scores)
        result[name] = {"metrics": summary, "probe_auc": auc}
    patched.enabled = False
    try:
        before, auc_before, scores = evaluate_patched(patched, split["test"], groups, seed)
    finally:
        patched.enabled = True
    write_json(out / "deployed" / "metrics.json", before)
    write_csv(out / "deployed" / "per_sample.csv", scores)
    result["deployed"] = {"metrics": before, "probe_auc": auc_before}
    leakage = {"split": "test", "sites": patched.sites, "probe": "logistic regression on pooled mean/std, 5-fold CV",
               "auc_before": auc_before, "auc_after": result["test"]["probe_auc"]}
    write_json(out / "leakage.json", leakage)
    return result


def _export(patched, dataset: SegmentationDataset, out: Path) -> dict:
    from applefair.apple.export import check_export, export_onnx, export_torchscript

    example = torch.stack([dataset[i]["image"] for i in range(min(2, len(dataset)))])
    patched = patched.cpu()  # exported files are CPU artefacts, portable to any runtime
    ts = export_torchscript(patched, example, out / "mitigated.torchscript.pt")
    info: dict = {"torchscript": ts.name}
    try:
        onnx_path = export_onnx(patched, example, out / "mitigated.onnx")
        info["onnx"] = onnx_path.name
    except Exception as exc:  # noqa: BLE001 - ONNX support depends on optional packages and the model's ops
        log.warning("ONNX export failed: %s", exc)
        info["onnx_error"] = str(exc).splitlines()[0]
        onnx_path = None
    try:
        info.update(check_export(patched, example, ts, onnx_path))
    except ImportError as exc:
        info["onnx_check_error"] = str(exc)
    write_json(out / "export.json", info)
    return info


def _run_baseline(net, spec, split: dict, groups: GroupSpec, cfg: AppleConfig, method: str, options: dict,
                  out: Path, quiet: bool) -> dict:
    """Another mitigation method through `applefair.baselines` (same budget: epochs, batch size, seed)."""
    try:
        from applefair.baselines import Budget, get_method
    except ImportError:
        raise InputError(f"--method {method}: baselines are not available in this installation "
                         "(only 'apple')") from None
    from applefair.metrics.evaluate import predict_scores
    from applefair.metrics.fairness import fairness_summary

    impl = get_method(method)
    budget = Budget(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, tolerance=cfg.tolerance)
    fit = impl.fit(net, spec, split["train"], split["val"], groups, budget, options=options, quiet=quiet)
    result: dict = {"method": method, "selected_epoch": fit.selected_epoch}
    for name, sub in (("test", ""), ("val", "val")):
        scores = predict_scores(fit.model, split[name], groups)
        summary = fairness_summary(scores, groups.attribute, groups.groups)
        folder = out / sub if sub else out
        write_json(folder / "metrics.json", summary)
        write_csv(folder / "per_sample.csv", scores)
        result[name] = {"metrics": summary}
    write_csv(out / "history.csv", pd.DataFrame(fit.history))
    return result


def _plot_curves(path: Path, history: list[dict]) -> None:
    """Validation Dice / ES-Dice, probe AUC and discriminator accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
