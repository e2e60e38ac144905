"""`applefair demo`: the whole story on the built-in benchmark, with no user files.

Two cases side by side, from one command: a *misused cue* (the minority's scanner marks its images, and
the training masks of that group were drawn smaller, so the deployed model learns to under-segment
whatever carries the mark; `spurious`) and a *difficulty-type gap* (the minority's lesions are fainter
and noisier: information is missing from its images; `contrast`). A latent patch can remove the first
and can only do nothing for the second; the use measure tells the two apart before any patch is fitted.

Each case composes the other use cases' steps: generate data -> train the deployed model (ERM, `train`; the
tiny SAM-like model by default, `model: unet` for a U-Net) -> freeze it and fit APPLE with its shipped defaults
(the quick demo: shorter games) at the model's site (`mitigate`) -> evaluate both models with the paired change,
leakage at every decoder input and the use measure (`evaluate`) -> check the frozen weights -> report.
The cases run in parallel processes (one thread each) on a CPU, one after another on a GPU.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from applefair.apple.config import AppleConfig
from applefair.baselines import get_method
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import BIASES, generate
from applefair.engine import distributed, runfolder
from applefair.engine.config import Device, Settings
from applefair.engine.device import resolve_device
from applefair.engine.io import json_safe
from applefair.errors import InputError
from applefair.metrics.outcome import Outcome, classify_outcome
from applefair.models.registry import save_model_dir
from applefair.report import write_reports
from applefair.training.erm import TrainConfig
from applefair.workflows._common import FrozenCheck, logged, provenance
from applefair.workflows.evaluate import decoder_inputs, evaluate_change
from applefair.workflows.mitigate import fit_method, write_patch
from applefair.workflows.train import build_model, train_deployed

log = logging.getLogger("applefair")
BOOTSTRAP = 1000  # resamples for every confidence interval of the demo
# sizes per model and mode. The SAM-like model's cases are cells of docs/ablation.md (500 images at 64 px, ERM 30
# epochs, bias strength 1.5): the full demo runs APPLE's shipped defaults (30 epochs, section "The shipped
# defaults") with three seeds, so that the spread between draws shows; the quick one runs one seed with games
# of 15 epochs (section "Restarts"), which fits its time budget (30 epochs take a case from 80 s to 165 s)
SAM_CELL = {"n": 500, "size": 64, "erm_epochs": 30, "erm_lr": 2e-3}
SIZES: dict[str, dict[str, dict]] = {
    "sam": {"full": {**SAM_CELL, "apple_epochs": AppleConfig().epochs, "seeds": 3},
            "quick": {**SAM_CELL, "apple_epochs": 15, "seeds": 1}},
    "unet": {"full": {"n": 800, "size": 96, "erm_epochs": 30, "erm_lr": 3e-3, "apple_epochs": 20,
                      "channels": [16, 32, 64, 128], "seeds": 1},
             "quick": {"n": 240, "size": 64, "erm_epochs": 15, "erm_lr": 5e-3, "apple_epochs": 4,
                       "channels": [16, 32, 64, 128], "seeds": 1}},
}
# case name -> the synthetic benchmark it runs on (docs/data.md), at the defaults ablation's strength
CASES: dict[str, dict] = {
    "misused_cue": {"bias": "spurious", "strength": 1.5,
                    "title": "Misused cue: the group is marked in the images and the model misuses the mark"},
    "difficulty": {"bias": "contrast", "strength": 1.5,
                   "title": "Difficulty: the minority's lesions are fainter, information is missing"},
}


class DemoSettings(Settings):
    """Settings of `applefair demo` (the built-in synthetic benchmark)."""

    model: Literal[tuple(SIZES)] = Field("sam", description="The deployed model: sam (a tiny SAM-like model, "
                                                             "box prompts from the mask) or unet.")
    quick: bool = Field(False, description="One seed per case, shorter games (under two minutes on 2 cores); the "
                                           "full demo runs each case with several seeds (SIZES) to show their "
                                           "spread.")
    n: int | None = Field(None, gt=0, description="Number of synthetic images per case (default: the model's, "
                                                          "SIZES).")
    size: int | None = Field(None, ge=16, description="Image side in pixels (default: the model's, SIZES).")
    bias: str | None = Field(None, description="Run one case on this bias mechanism instead of the two cases "
                                               "(misused_cue: spurious, difficulty: contrast).")
    minority_share: float = Field(0.25, gt=0.0, lt=1.0, description="Share of the minority group.")
    seed: int = Field(0, ge=0, description="Seed for data, training and APPLE (the first, where seeds > 1).")
    seeds: int | None = Field(None, ge=1, description="Seeds per case: seed, seed + 1, ... (default: the model's "
                                                      "and mode's, SIZES).")
    erm_epochs: int | None = Field(None, ge=1, description="Epochs of ERM training (default: the model's, SIZES).")
    erm_lr: float | None = Field(None, gt=0.0, description="Learning rate of ERM training (default: the model's).")
    apple_epochs: int | None = Field(None, ge=1, description="Epochs of APPLE training (default: the model's, SIZES; "
                                                            "the full sam demo: APPLE's shipped default).")
    channels: list[int] | None = Field(None, min_length=2, description="U-Net channels per level.")
    workers: int | None = Field(None, ge=1, description="Cases run at once (default: one per CPU core on a CPU, "
                                                        "one on a GPU).")
    device: Device = Field("auto", description="auto, cpu, cuda or cuda:N.")

    def resolved(self) -> DemoSettings:
        """Every size filled in: the quick or the full defaults where nothing was given."""
        base = SIZES[self.model]["quick" if self.quick else "full"]
        return self.replace(**{k: v if getattr(self, k) is None else getattr(self, k) for k, v in base.items()})

    def cases(self) -> dict[str, dict]:
        """{case folder: its benchmark}: the two cases, or the one `bias` names."""
        if self.bias is None:
            return CASES
        return {self.bias: {"bias": self.bias, "strength": 1.0, "title": f"Bias mechanism '{self.bias}'"}}

    def runs(self) -> list[tuple[str, str, int]]:
        """(folder, case, seed) per run, seed by seed: the first seed's folders are the cases' names, further
        seeds' `<case>_seed<s>`."""
        return [(case if s == self.seed else f"{case}_seed{s}", case, s)
                for s in range(self.seed, self.seed + (self.seeds or 1)) for case in self.cases()]


@dataclass
class CaseResult:
    """One case of the demo, as plain records (it crosses a process boundary; all of it is also in the case's
    folder): the deployed (`before`) and patched (`after`) model's metrics.json, use.json, frozen_check.json."""

    name: str
    title: str
    bias: str
    case: str
    seed: int
    before: dict
    after: dict
    use: dict
    check: dict
    outcome: Outcome
    seconds: float


@dataclass
class DemoResult:
    cases: list[CaseResult]

    def records(self) -> dict[str, dict]:
        """{case folder: its cases.json entry}: what the side-by-side report and the console show."""
        return {r.name: _case_record(r) for r in self.cases}


def run_demo(out: str | os.PathLike, settings: DemoSettings, quiet: bool = False, overwrite: bool = True) -> DemoResult:
    """Run the demo into `out` (built aside and moved into place only when every case finished)."""
    st = settings.resolved()
    st = st.replace(device=str(resolve_device(st.device)))
    cases = st.cases()
    for case in cases.values():
        if case["bias"] not in BIASES:  # bad input before anything is written
            raise InputError(f"--bias {case['bias']}: not a bias mechanism (expected one of: {', '.join(BIASES)})")
    out = Path(out)
    if out.exists() and not (out / runfolder.CONFIG).exists() and any(out.iterdir()):
        overwrite = False  # never replace a folder that is not an applefair run
    started = time.time()
    with distributed.rank_stage(out, overwrite=overwrite) as stage, logged(stage):
        config = provenance("demo", **st.to_dict(), cases={k: {"bias": v["bias"], "strength": v["strength"]}
                                                           for k, v in cases.items()})
        runfolder.write_config(stage, config)
        log.info("config %s", config)
        result = DemoResult(_run_cases(stage, st, quiet))
        runfolder.write_cases(stage, result.records())
        write_reports(stage)  # the side-by-side report.html / report.md
    log.info("demo finished in %.1f s", time.time() - started)
    return result


def _workers(st: DemoSettings, n_cases: int) -> int:
    if st.workers is not None:
        return min(st.workers, n_cases)
    if st.device != "cpu":
        return 1
    return max(1, min(n_cases, os.cpu_count() or 1))


def _run_cases(stage: Path, st: DemoSettings, quiet: bool) -> list[CaseResult]:
    cases = st.cases()
    jobs = [(stage / folder, st.replace(seed=seed), folder, name, cases[name]) for folder, name, seed in st.runs()]
    workers = _workers(st, len(jobs))
    if workers == 1:
        return [_run_case(*job, quiet=quiet, threads=None) for job in jobs]
    log.info("running %d cases in %d processes (one thread each)", len(jobs), workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: a fresh interpreter per worker (forking a process that has run torch can deadlock its thread pool)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_case, *job, quiet=True, threads=threads) for job in jobs]
        return [f.result() for f in futures]


def _run_case(folder: Path, st: DemoSettings, name: str, case_name: str, case: dict, quiet: bool,
              threads: int | None) -> CaseResult:
    """One case at `st.seed` into `folder`: data, deployed model, APPLE patch, before/after evaluation, frozen
    check, report."""
    if threads is not None:
        torch.set_num_threads(threads)
    else:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    with logged(folder):
        log.info("case %s (seed %d): %s", name, st.seed, case["title"])
        runfolder.write_config(folder, provenance("demo", case=case_name, **{**st.to_dict(), "bias": case["bias"]},
                                                  strength=case["strength"]))
        manifest = generate(folder / runfolder.DATA, n=st.n, size=st.size, bias=case["bias"],
                            strength=case["strength"], minority_share=st.minority_share, seed=st.seed)
        frame = read_manifest(manifest)
        groups = GroupSpec("sex").fit(frame)
        split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
        # train: the model to deploy
        args = {"variant": "tiny"} if st.model == "sam" else {"channels": list(st.channels)}
        net, spec = build_model(st.model, seed=st.seed, args=args)
        train_deployed(net, spec, split, groups, TrainConfig(epochs=st.erm_epochs, lr=st.erm_lr, seed=st.seed,
                                                             device=st.device), quiet=quiet)
        net.eval()
        save_model_dir(folder / runfolder.DEPLOYED, net, spec)
        frozen = FrozenCheck(net)
        # mitigate: APPLE with its shipped defaults (epochs: the mode's, SIZES) at the model's own site
        cfg = AppleConfig(epochs=st.apple_epochs, seed=st.seed)
        fit = fit_method(get_method("apple"), net, spec, split, groups, cfg, quiet=quiet)
        write_patch(folder, fit, spec, groups, cfg, frozen.hash_before)
        # evaluate: both models, fresh probes at every decoder input, the use measure of both
        ev = evaluate_change(fit.model, split["test"], groups, deployed=net,
                             sites=decoder_inputs(spec, fit.latent_sites), bootstrap=BOOTSTRAP, seed=st.seed,
                             use=True, label="patched")
        fit.model.remove()
        runfolder.write_evaluation(folder / runfolder.BEFORE, ev.before_frame.to_dict(), ev.before.per_sample)
        runfolder.write_evaluation(folder / runfolder.AFTER, ev.frame.to_dict(), ev.after.per_sample)
        runfolder.write_paired(folder, ev.paired)
        runfolder.write_leakage(folder, ev.leakage or {})
        runfolder.write_use(folder, ev.use or {})
        check = frozen.verify(fit.deployed, **fit.extra)
        runfolder.write_frozen_check(folder, check)
        runfolder.write_history(folder, fit.history)
        outcome = classify_outcome(ev.paired, ev.leakage, ev.use, fit.selected_epoch, "patched")
        log.info("case %s: %s", name, outcome.sentence)
        write_reports(folder)  # report.html, report.md, tables/, plots/ of this case
    return CaseResult(name, case["title"], case["bias"], case_name, st.seed, json_safe(ev.before_frame.to_dict()),
                      json_safe(ev.frame.to_dict()), json_safe(ev.use or {}), check, outcome, time.time() - started)


def _case_record(r: CaseResult) -> dict:
    """One entry of cases.json: what the side-by-side report and the console show."""
    return {"title": r.title, "folder": r.name, "bias": r.bias, "case": r.case, "seed": r.seed,
            "dice_before": r.before["overall"]["dice"], "dice_after": r.after["overall"]["dice"],
            "gap_before": r.before["fairness"]["dice_delta"], "gap_after": r.after["fairness"]["dice_delta"],
            "outcome": r.outcome.kind, "outcome_sentence": r.outcome.sentence,
            "gap_change_ci": list(r.outcome.change_ci) if r.outcome.change_ci else None,
            "use": r.use.get("deployed"), "use_patched": r.use.get("patched"),
            "selected_epoch": r.check.get("selected_epoch"), "unchanged": r.check.get("unchanged"),
            "seconds": round(r.seconds, 1)}
