"""Training APPLE: the game of perturbers and discriminator(s) on a frozen segmentor, epoch by epoch.

After each epoch (`game.play_epoch`): validation Dice / ES-Dice, a *fresh* logistic probe's AUC on
the validation latents (the judge of leakage, not D_p's own accuracy), selection, early stopping
and an atomic checkpoint (so `resume` continues bit-for-bit).

The frozen segmentor's weights are never given to an optimiser and its BatchNorm layers stay in
eval mode; the use cases prove it with a hash of its state dict before and after.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from applefair.apple.cache import LatentCache, build_caches
from applefair.apple.checkpoint import load_checkpoint, save_checkpoint
from applefair.apple.config import AppleConfig
from applefair.apple.game import build_game, decoder_inputs, perturber_snapshot, play_epoch
from applefair.apple.patch import PatchedSegmentor
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed
from applefair.engine.progress import progress_bar
from applefair.engine.runfolder import CHECKPOINT, RESTART_CHECKPOINT
from applefair.engine.seeding import seed_everything
from applefair.errors import InputError
from applefair.metrics.evaluate import score
from applefair.metrics.frame import MetricFrame
from applefair.models.sites import site_modules
from applefair.training.selection import selection_score, within_tolerance

log = logging.getLogger("applefair")

__all__ = ["AppleConfig", "AppleResult", "train_apple", "validate"]


@dataclass
class AppleResult:
    """What `train_apple` returns: the patched model at the selected epoch and how it was chosen."""

    patched: PatchedSegmentor  # epoch 0 (selected when nothing qualified) is the unchanged model
    history: list[dict]  # one row per epoch, epoch 0 included
    selected_epoch: int
    sites: list[str]
    stopped_early: bool = False
    base_val_dice: float = math.nan  # the deployed model's validation Dice (the tolerance's reference)
    cache: list[str] = field(default_factory=list)  # modules whose outputs were cached
    perturber: dict[str, dict] = field(default_factory=dict)  # each site's perturber spec
    last_state: dict = field(default_factory=dict, repr=False)  # the perturbers after the last epoch played
    restart: int = 0  # the restart kept (`restarts` > 1); history, selected_epoch and last_state are its own
    restarts: list[dict] = field(default_factory=list)  # each restart's seed, selected epoch and validation score

    def summary(self) -> dict:
        """The fields a run folder records beside the frozen-weights check."""
        out = {"selected_epoch": self.selected_epoch, "sites": self.sites, "stopped_early": self.stopped_early,
               "base_val_dice": self.base_val_dice, "cache": self.cache, "perturber": self.perturber}
        if self.restarts:
            out.update(restart=self.restart, restarts=self.restarts)
        return out


def validate(patched: PatchedSegmentor, dataset: SegmentationDataset, groups: GroupSpec, seed: int = 0,
             cache: LatentCache | None = None) -> tuple[MetricFrame, float]:
    """(per-group metrics, fresh-probe AUC on f_p at every perturbed site, concatenated) on `dataset`.

    `cache` (built on `dataset`) replays the frozen encoder, so validating each epoch costs only the decoder."""
    scored = score(patched, dataset, groups, capture=site_modules(patched, patched.sites),
                   replay=(lambda batch: cache.replay(batch["index"])) if cache is not None else None)
    return scored.frame(), scored.probe_auc(seed=seed)


def _row(frame: MetricFrame, auc: float) -> dict:
    return {"val_dice": frame.dice, "val_es_dice": selection_score(frame), "val_gap": frame.gap(), "probe_auc": auc}


def train_apple(net: nn.Module, default_site: str, train: SegmentationDataset, val: SegmentationDataset,
                groups: GroupSpec, cfg: AppleConfig, quiet: bool = False, head: str = "sigmoid",
                run_dir: str | os.PathLike | None = None, resume: bool = False,
                on_epoch: Callable[[dict], None] | None = None, skip_sites: list[str] | None = None
                ) -> AppleResult:
    """Fit perturber(s) and discriminator(s) on the frozen `net`.

    Sites: `cfg.sites`, else the model's `default_site`, or with `cfg.perturb == "all"` every decoder input
    (`skip_sites` and the default site). Everything runs on the device `net` lives on (move it there first).
    With `run_dir`, a checkpoint is written there after every epoch; `resume` continues from it.
    `on_epoch(row)` is called after each epoch's validation with its history row (progress, timing).
    With `cfg.restarts` > 1 the game is played that many times from other initialisations (seeds
    `restart_seed(cfg.seed, r)`) on one latent cache, and the restart whose selected epoch scores best on
    the selection's criterion is kept (`pick_restart`); each restart has its own checkpoint.
    """
    inputs = decoder_inputs(default_site, list(skip_sites or []))
    sites = list(cfg.sites or (inputs if cfg.perturb == "all" else [default_site]))
    play = functools.partial(_play, net, sites, inputs, train, val, groups, quiet=quiet, head=head, run_dir=run_dir,
                             resume=resume, on_epoch=on_epoch)

    def checkpoint(r: int) -> Path | None:  # restart 0 keeps the plain game's name: a run folder's resume point
        return Path(run_dir) / (RESTART_CHECKPOINT.format(r) if r else CHECKPOINT) if run_dir else None

    if cfg.restarts == 1:
        return play(cfg, checkpoint(0))[0]
    results: list[AppleResult] = []
    caches = None
    for r in range(cfg.restarts):
        sub = cfg.model_copy(update={"seed": restart_seed(cfg.seed, r), "restarts": 1})
        res, caches = play(sub, checkpoint(r), caches=caches)
        log.info("APPLE restart %d/%d (seed %d): selected epoch %d, validation ES-Dice %.4f", r + 1, cfg.restarts,
                 sub.seed, res.selected_epoch, restart_score(res))
        results.append(res)
        if r < cfg.restarts - 1:
            res.patched.remove()  # the next restart hooks the same sites
    best = pick_restart(results)
    kept = results[-1].patched  # hooked; every restart's perturbers share one architecture
    kept.perturbers.load_state_dict(results[best].patched.perturbers.state_dict())
    runs = [{"restart": r, "seed": restart_seed(cfg.seed, r), "selected_epoch": x.selected_epoch,
             "val_es_dice": restart_score(x)} for r, x in enumerate(results)]
    return dataclasses.replace(results[best], patched=kept, restart=best, restarts=runs)


RESTART_SEED_STRIDE = 1000


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart `restart` (0: `seed` itself, so one restart is the plain game)."""
    return seed + RESTART_SEED_STRIDE * restart


def restart_score(res: AppleResult) -> float:
    """The selected epoch's validation ES-Dice: what the selection maximised within the restart."""
    return float(res.history[res.selected_epoch]["val_es_dice"])


def pick_restart(results: list[AppleResult]) -> int:
    """The restart to keep: the highest selected validation ES-Dice among those whose selection moved off the
    deployed model; the first restart where none did (each then holds the unchanged model), or on ties."""
    moved = [r for r, res in enumerate(results) if res.selected_epoch > 0]
    if not moved:
        return 0
    return max(moved, key=lambda r: (restart_score(results[r]), -r))


def _play(net: nn.Module, sites: list[str], inputs: list[str], train: SegmentationDataset, val: SegmentationDataset,
          groups: GroupSpec, cfg: AppleConfig, ckpt: Path | None, quiet: bool, head: str,
          run_dir: str | os.PathLike | None, resume: bool, on_epoch: Callable[[dict], None] | None,
          caches: tuple[LatentCache | None, LatentCache | None] | None = None
          ) -> tuple[AppleResult, tuple[LatentCache | None, LatentCache | None]]:
    """One game from `cfg.seed`, and its (train, val) latent caches, which a later game on the same net reuses."""
    gen = seed_everything(cfg.seed)
    game = build_game(net, sites, inputs, train, groups, cfg, head, gen)
    patched = game.patched
    game.cache, val_cache = caches if caches is not None else build_caches(patched, sites, train, val, cfg, run_dir)

    optims = {"g": game.opt_g, "d": game.opt_d}
    if resume and ckpt is not None and ckpt.is_file():
        meta, states = load_checkpoint(ckpt, modules=game.modules(), optimizers=optims, generator=gen)
        if meta["config"] != cfg.to_dict():
            patched.remove()  # the caller's network leaves as it came
            raise InputError(f"{ckpt}: the checkpoint was made with another APPLE config; "
                             f"resume with the same options or start a new --out folder")
        state = meta
        best_state = states.get("best", {})
        log.info("resuming APPLE after epoch %d", state["epoch"])
    else:
        base, base_auc = validate(patched, val, groups, cfg.seed, val_cache)
        state = {"epoch": 0, "best_epoch": 0, "best_score": selection_score(base), "since_best": 0,
                 "stopped": False, "base_dice": base.dice, "history": [{"epoch": 0, **_row(base, base_auc)}],
                 "config": cfg.to_dict()}
        best_state = perturber_snapshot(game)

    with progress_bar(quiet) as bar:
        task = bar.add_task("APPLE (perturber vs discriminator)", total=cfg.epochs, info="",
                            completed=state["epoch"])
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if state["stopped"]:
                break
            row = play_epoch(epoch, game)
            frame, auc = validate(patched, val, groups, cfg.seed, val_cache)
            row.update(_row(frame, auc))
            state["history"].append(row)
            log.info("apple epoch %d %s", epoch, {k: round(v, 4) for k, v in row.items()})
            private = cfg.max_probe_auc >= 1.0 or auc <= cfg.max_probe_auc  # NaN (no probe): not private
            feasible = (within_tolerance(row["val_dice"], state["base_dice"], cfg.tolerance) and private
                        and row["val_es_dice"] > state["best_score"])
            if cfg.selection == "last" or feasible:
                state.update(best_score=row["val_es_dice"], best_epoch=epoch, since_best=0)
                best_state = perturber_snapshot(game)
            elif epoch > cfg.d_warmup:
                state["since_best"] += 1
            state["epoch"] = epoch
            if cfg.patience and state["since_best"] >= cfg.patience:
                state["stopped"] = True
                log.info("early stop after epoch %d (best epoch %d)", epoch, state["best_epoch"])
            if ckpt is not None:
                save_checkpoint(ckpt, modules=game.modules(), states={"best": best_state}, optimizers=optims,
                                generator=gen, meta=state)
            bar.update(task, advance=1, info=f"L_seg {row['l_seg']:.3f} D acc {row['d_acc']:.2f} "
                                             f"probe AUC {auc:.2f} val ES-Dice {row['val_es_dice']:.3f}")
            if on_epoch is not None:
                on_epoch(row)
    last_state = perturber_snapshot(game)
    patched.perturbers.load_state_dict(best_state)
    patched.stop_observing()
    distributed.unwrap_children(patched.perturbers)
    patched.eval()
    result = AppleResult(patched=patched, history=state["history"], selected_epoch=state["best_epoch"], sites=sites,
                         stopped_early=state["stopped"], base_val_dice=state["base_dice"],
                         cache=game.cache.names if game.cache else [], perturber=patched.perturber_specs(),
                         last_state=last_state)
    return result, (game.cache, val_cache)
