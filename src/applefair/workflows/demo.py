"""`applefair demo`: the whole story on the built-in benchmark, with no user files.

generate data -> train the deployed U-Net (ERM) -> evaluate per group -> freeze it and
train APPLE at its bottleneck -> evaluate again -> check the frozen weights -> report.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from pydantic import Field

from applefair._version import __version__
from applefair.apple.patch import save_patch
from applefair.apple.trainer import AppleConfig, train_apple
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import generate
from applefair.engine.config import Device, Settings
from applefair.engine.io import json_safe, staged_dir, state_dict_hash, write_csv, write_json, write_yaml
from applefair.engine.runinfo import run_info
from applefair.metrics.compare import paired_comparison
from applefair.metrics.evaluate import score_and_capture
from applefair.metrics.fairness import fairness_summary
from applefair.metrics.leakage import site_leakage
from applefair.models.registry import create_segmentor, save_model_dir
from applefair.report import write_reports
from applefair.training.erm import TrainConfig, train_segmentor

log = logging.getLogger("applefair")
BOOTSTRAP = 1000  # resamples for every confidence interval of the demo


class DemoSettings(Settings):
    """Settings of `applefair demo` (the built-in synthetic benchmark)."""

    quick: bool = Field(False, description="Small, fast version (about a minute on 2 cores).")
    n: int | None = Field(None, gt=0, description="Number of synthetic images (default 800, quick 240).")
    size: int | None = Field(None, ge=16, description="Image side in pixels (default 96, quick 64).")
    bias: str = Field("contrast", description="Bias mechanism of the synthetic data.")
    minority_share: float = Field(0.25, gt=0.0, lt=1.0, description="Share of the minority group.")
    seed: int = Field(0, ge=0, description="Seed for data, training and APPLE.")
    erm_epochs: int | None = Field(None, ge=1, description="Epochs of ERM training (default 30, quick 15).")
    erm_lr: float | None = Field(None, gt=0.0, description="Learning rate of ERM training (default 3e-3, quick 5e-3).")
    apple_epochs: int | None = Field(None, ge=1, description="Epochs of APPLE training (default 20, quick 4).")
    channels: list[int] | None = Field(None, min_length=2, description="U-Net channels per level.")
    device: Device = Field("auto", description="auto, cpu, cuda or cuda:N.")


@dataclass
class DemoConfig:
    n: int = 800
    size: int = 96
    bias: str = "contrast"
    minority_share: float = 0.25
    seed: int = 0
    erm_epochs: int = 30
    erm_lr: float = 3e-3
    apple_epochs: int = 20
    channels: tuple[int, ...] = (16, 32, 64, 128)
    device: str = "cpu"  # where ERM, APPLE and evaluation run (the command resolves --device auto)

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        """A run of about a minute: fewer, smaller images and fewer epochs."""
        return cls(**{"n": 240, "size": 64, "erm_epochs": 15, "erm_lr": 5e-3, "apple_epochs": 4, **kw})


def run_demo(out: str | os.PathLike, cfg: DemoConfig, quiet: bool = False, overwrite: bool = True) -> dict:
    """Run the demo into `out`; returns {'before', 'after', 'check', 'leakage'}."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    out = Path(out)
    if out.exists() and not (out / "config.yaml").exists() and any(out.iterdir()):
        overwrite = False  # never replace a folder that is not an applefair run
    started = time.time()
    with staged_dir(out, overwrite=overwrite) as stage:
        handler = logging.FileHandler(stage / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            result = _run(stage, cfg, quiet)
        finally:
            log.removeHandler(handler)
            handler.close()
    log.info("demo finished in %.1f s", time.time() - started)
    return result


def _run(stage: Path, cfg: DemoConfig, quiet: bool) -> dict:
    config = {"command": "demo", "argv": sys.argv, "applefair": __version__,
              "torch": torch.__version__, **asdict(cfg), "run": run_info()}
    write_yaml(stage / "config.yaml", config)
    log.info("config %s", config)
    manifest = generate(stage / "data", n=cfg.n, size=cfg.size, bias=cfg.bias,
                        minority_share=cfg.minority_share, seed=cfg.seed)
    frame = read_manifest(manifest)
    groups = GroupSpec("sex").fit(frame)
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}

    net, spec = create_segmentor("unet", seed=cfg.seed, channels=list(cfg.channels))
    train_segmentor(net, split["train"], split["val"], groups,
                    TrainConfig(epochs=cfg.erm_epochs, lr=cfg.erm_lr, seed=cfg.seed, device=cfg.device), quiet=quiet)
    save_model_dir(stage / "deployed", net, spec)

    test = split["test"]
    before_scores, f_o = score_and_capture(net, test, groups, sites=[spec.site])
    before = fairness_summary(before_scores, groups.attribute, groups.groups, bootstrap=BOOTSTRAP, seed=cfg.seed)
    _write_eval(stage / "before", before, before_scores)

    deployed_hash = state_dict_hash(net)
    apple_cfg = AppleConfig(epochs=cfg.apple_epochs, seed=cfg.seed)
    patched, history, check = train_apple(net, spec.site, split["train"], split["val"], groups, apple_cfg, quiet)
    after_scores, f_p = score_and_capture(patched, test, groups, sites=patched.sites)
    after = fairness_summary(after_scores, groups.attribute, groups.groups, bootstrap=BOOTSTRAP, seed=cfg.seed)
    _write_eval(stage / "after", after, after_scores)
    paired = paired_comparison(before_scores, after_scores, groups.groups, resamples=BOOTSTRAP, seed=cfg.seed)
    write_json(stage / "paired.json", json_safe(paired))
    save_patch(stage / "patch.safetensors", patched, {"model": spec.name, "model_args": spec.args,
                                                       "groups": groups.to_dict(), "apple": apple_cfg.to_dict(),
                                                       "selected_epoch": check["selected_epoch"],
                                                       "deployed_weights_sha256": deployed_hash})
    check["hash_final"] = state_dict_hash(net)
    check["unchanged"] = check["unchanged"] and check["hash_final"] == deployed_hash
    # fresh probes on what the decoder receives: f_o (deployed) vs f_p (patched), never the discriminator
    leakage = {s: site_leakage(f_o[s], f_p[s], test.group_ids, seed=cfg.seed) for s in patched.sites}
    write_json(stage / "leakage.json", json_safe(leakage))
    write_json(stage / "frozen_check.json", check)
    write_csv(stage / "history.csv", pd.DataFrame(history))
    write_reports(stage)  # report.html, report.md, tables/, plots/
    return {"before": before, "after": after, "paired": paired, "check": check, "leakage": leakage}


def _write_eval(folder: Path, summary: dict, scores) -> None:
    write_json(folder / "metrics.json", json_safe(summary))
    write_csv(folder / "per_sample.csv", scores)
