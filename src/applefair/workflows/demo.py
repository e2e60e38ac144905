"""`applefair demo`: the whole story on the built-in benchmark, with no user files.

It composes the other use cases' steps: generate data -> train the deployed U-Net (ERM, `train`)
-> evaluate per group -> freeze it and fit APPLE at its bottleneck (`mitigate`) -> evaluate again
beside the deployed model (`evaluate`) -> check the frozen weights -> report.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from applefair.apple.config import AppleConfig
from applefair.baselines import get_method
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import generate
from applefair.engine import distributed, runfolder
from applefair.engine.config import Device, Settings
from applefair.engine.device import resolve_device
from applefair.metrics.evaluate import Evaluation
from applefair.models.registry import save_model_dir
from applefair.report import write_reports
from applefair.training.erm import TrainConfig
from applefair.workflows._common import FrozenCheck, logged, provenance
from applefair.workflows.evaluate import evaluate_change
from applefair.workflows.mitigate import fit_method, write_patch
from applefair.workflows.train import build_model, train_deployed

log = logging.getLogger("applefair")
BOOTSTRAP = 1000  # resamples for every confidence interval of the demo
FULL = {"n": 800, "size": 96, "erm_epochs": 30, "erm_lr": 3e-3, "apple_epochs": 20, "channels": [16, 32, 64, 128]}
QUICK = {**FULL, "n": 240, "size": 64, "erm_epochs": 15, "erm_lr": 5e-3, "apple_epochs": 4}


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

    def resolved(self) -> DemoSettings:
        """Every size filled in: the quick or the full defaults where nothing was given."""
        base = QUICK if self.quick else FULL
        return self.replace(**{k: v if getattr(self, k) is None else getattr(self, k) for k, v in base.items()})


@dataclass
class DemoResult:
    evaluation: Evaluation  # the patched model beside the deployed one (test split)
    check: dict  # frozen_check.json


def run_demo(out: str | os.PathLike, settings: DemoSettings, quiet: bool = False, overwrite: bool = True) -> DemoResult:
    """Run the demo into `out` (built aside and moved into place only when it finished)."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    st = settings.resolved()
    st = st.replace(device=str(resolve_device(st.device)))
    out = Path(out)
    if out.exists() and not (out / runfolder.CONFIG).exists() and any(out.iterdir()):
        overwrite = False  # never replace a folder that is not an applefair run
    started = time.time()
    with distributed.rank_stage(out, overwrite=overwrite) as stage, logged(stage):
        result = _run(stage, st, quiet)
    log.info("demo finished in %.1f s", time.time() - started)
    return result


def _run(stage: Path, st: DemoSettings, quiet: bool) -> DemoResult:
    config = provenance("demo", **st.to_dict())
    runfolder.write_config(stage, config)
    log.info("config %s", config)
    manifest = generate(stage / runfolder.DATA, n=st.n, size=st.size, bias=st.bias,
                        minority_share=st.minority_share, seed=st.seed)
    frame = read_manifest(manifest)
    groups = GroupSpec("sex").fit(frame)
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
    # train: the model to deploy
    net, spec = build_model("unet", seed=st.seed, args={"channels": list(st.channels)})
    train_deployed(net, spec, split, groups, TrainConfig(epochs=st.erm_epochs, lr=st.erm_lr, seed=st.seed,
                                                         device=st.device), quiet=quiet)
    net.eval()
    save_model_dir(stage / runfolder.DEPLOYED, net, spec)
    frozen = FrozenCheck(net)
    # mitigate: APPLE at the model's own site
    cfg = AppleConfig(epochs=st.apple_epochs, seed=st.seed)
    fit = fit_method(get_method("apple"), net, spec, split, groups, cfg, quiet=quiet)
    write_patch(stage, fit, spec, groups, cfg, frozen.hash_before)
    # evaluate: the patched model beside the deployed one, with fresh probes on what the decoder receives
    ev = evaluate_change(fit.model, split["test"], groups, deployed=net, sites=fit.latent_sites,
                         bootstrap=BOOTSTRAP, seed=st.seed)
    fit.model.remove()
    runfolder.write_evaluation(stage / runfolder.BEFORE, ev.before_frame.to_dict(), ev.before.per_sample)
    runfolder.write_evaluation(stage / runfolder.AFTER, ev.frame.to_dict(), ev.after.per_sample)
    runfolder.write_paired(stage, ev.paired)
    runfolder.write_leakage(stage, ev.leakage or {})
    check = frozen.verify(fit.deployed, **fit.extra)
    runfolder.write_frozen_check(stage, check)
    runfolder.write_history(stage, fit.history)
    write_reports(stage)  # report.html, report.md, tables/, plots/
    return DemoResult(ev, check)
