"""Training APPLE: alternating discriminator and perturber steps on a frozen segmentor.

One epoch: for each batch, the frozen segmentor runs with the perturbers hooked in (from the
latent cache when it can), D_p takes `n_d` steps on sg(f_p), then G_p takes one step on
L_seg + adversarial term. After each epoch: validation Dice / ES-Dice, a *fresh* logistic
probe's AUC on the validation latents (the judge of leakage, not D_p's own accuracy),
selection, early stopping and an atomic checkpoint (so `resume` continues bit-for-bit).

The frozen segmentor's weights are never given to an optimiser and its BatchNorm layers stay in
eval mode; the use cases prove it with a hash of its state dict before and after.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from applefair.apple.cache import LatentCache
from applefair.apple.checkpoint import load_checkpoint, save_checkpoint
from applefair.apple.config import AppleConfig
from applefair.apple.discriminator import Discriminator
from applefair.apple.losses import (
    SegLoss,
    adversarial_term,
    balanced_weights,
    grad_reverse,
    group_mean_gap,
    known_accuracy,
    known_ce,
    known_entropy,
)
from applefair.apple.patch import PatchedSegmentor, latent_shapes, perturbers_for
from applefair.apple.perturber import latent_channels
from applefair.data.augment import augment_batch
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed, samplers
from applefair.engine.device import module_device, to_device
from applefair.engine.precision import Precision, game_precision
from applefair.engine.progress import progress_bar
from applefair.engine.runfolder import CHECKPOINT, LATENT_CACHE
from applefair.engine.seeding import seed_everything
from applefair.errors import InputError
from applefair.metrics.evaluate import score
from applefair.metrics.frame import MetricFrame
from applefair.metrics.leakage import pool_latent
from applefair.models.forward import segment
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

    def summary(self) -> dict:
        """The fields a run folder records beside the frozen-weights check."""
        return {"selected_epoch": self.selected_epoch, "sites": self.sites, "stopped_early": self.stopped_early,
                "base_val_dice": self.base_val_dice, "cache": self.cache, "perturber": self.perturber}


def validate(patched: PatchedSegmentor, dataset: SegmentationDataset, groups: GroupSpec, seed: int = 0,
             cache: LatentCache | None = None) -> tuple[MetricFrame, float]:
    """(per-group metrics, fresh-probe AUC on f_p at every perturbed site, concatenated) on `dataset`.

    `cache` (built on `dataset`) replays the frozen encoder, so validating each epoch costs only the decoder."""
    scored = score(patched, dataset, groups, capture=site_modules(patched, patched.sites),
                   replay=(lambda batch: cache.replay(batch["index"])) if cache is not None else None)
    return scored.frame(), scored.probe_auc(seed=seed)


def _row(frame: MetricFrame, auc: float) -> dict:
    return {"val_dice": frame.dice, "val_es_dice": selection_score(frame), "val_gap": frame.gap(), "probe_auc": auc}


def _example_batch(dataset: SegmentationDataset, n: int = 2) -> dict:
    loader = DataLoader(dataset, batch_size=min(n, len(dataset)), shuffle=False, generator=torch.Generator())
    return next(iter(loader))


def _build(net: nn.Module, sites: list[str], train: SegmentationDataset, groups: GroupSpec, cfg: AppleConfig
           ) -> tuple[PatchedSegmentor, Discriminator]:
    """Perturbers and discriminator, sized from one example batch, on the device the net lives on."""
    dev = module_device(net)
    example = to_device(_example_batch(train), dev)
    perturbers = perturbers_for(net, sites, example, cfg.width, cfg.perturber, cfg.max_params_ratio,
                                global_branch=cfg.global_branch, num_res_blocks=cfg.res_blocks)
    shapes = latent_shapes(net, sites, example)
    patched = PatchedSegmentor(net, {s: p.to(dev) for s, p in perturbers.items()})
    log.info("perturber(s): %s", patched.perturber_specs())
    disc = Discriminator([latent_channels(shapes[s]) for s in sites], groups.num_groups, hidden=cfg.d_hidden,
                         dropout=cfg.d_dropout, spectral_norm=cfg.d_spectral_norm, pooling=cfg.d_pooling)
    return patched, disc.to(dev)


def _build_cache(patched: PatchedSegmentor, sites: list[str], dataset: SegmentationDataset, cfg: AppleConfig,
                 folder: Path | None, indices: list[int] | None) -> LatentCache | None:
    """The frozen encoder's outputs on `dataset` (None where nothing can be cached and cache is 'auto')."""
    try:
        with patched.disabled():
            return LatentCache.build(patched.net, sites, dataset, folder=folder, indices=indices)
    except ValueError:
        if cfg.cache != "auto":
            raise
        return None


def _clip(params, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)


@dataclass
class _Game:
    """The players and what they play with, built once per run (one object instead of a dozen arguments)."""

    patched: PatchedSegmentor
    disc: nn.Module  # D_p (in DistributedDataParallel under torchrun)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    seg_loss: SegLoss
    freq: torch.Tensor  # the training split's group frequencies (group-balanced L_seg)
    gen: torch.Generator  # data order and flips
    loader: DataLoader
    cache: LatentCache | None
    amp: Precision
    sites: list[str]
    cfg: AppleConfig


def train_apple(net: nn.Module, default_site: str, train: SegmentationDataset, val: SegmentationDataset,
                groups: GroupSpec, cfg: AppleConfig, quiet: bool = False, head: str = "sigmoid",
                run_dir: str | os.PathLike | None = None, resume: bool = False,
                on_epoch: Callable[[dict], None] | None = None) -> AppleResult:
    """Fit perturber(s) and a discriminator on the frozen `net`.

    Everything runs on the device `net` lives on (move it there first). With `run_dir`, a checkpoint
    is written there after every epoch; `resume` continues from it. `on_epoch(row)` is called after
    each epoch's validation with its history row (progress, timing).
    """
    gen = seed_everything(cfg.seed)
    sites = list(cfg.sites or [default_site])
    patched, disc = _build(net, sites, train, groups, cfg)
    # under torchrun: DDP on each perturber (they run inside the frozen net's hooks) and on D_p;
    # with one process both calls return the modules unchanged
    distributed.wrap_children(patched.perturbers)
    dev = module_device(net)
    known = train.group_ids[train.group_ids >= 0]
    game = _Game(patched=patched, disc=distributed.wrap(disc),
                 opt_g=torch.optim.Adam(patched.perturbers.parameters(), lr=cfg.lr_g),
                 opt_d=torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999)),
                 seg_loss=SegLoss(head), gen=gen,
                 freq=torch.tensor(np.bincount(known, minlength=groups.num_groups) / max(len(known), 1),
                                   dtype=torch.float32, device=dev),
                 loader=samplers.make_loader(train, cfg.batch_size, shuffle=True, generator=gen,
                                                drop_last=len(train) > cfg.batch_size, shards=cfg.cache_shards),
                 cache=None, amp=game_precision(cfg.precision, dev), sites=sites, cfg=cfg)
    val_cache = None
    if cfg.cache != "off" and not cfg.augment:
        folder = Path(run_dir) / LATENT_CACHE if (cfg.cache == "disk" and run_dir) else None
        # sharded: this rank's training samples only; every rank validates on the whole val split
        game.cache = _build_cache(patched, sites, train, cfg, folder,
                                  samplers.shard_indices(len(train)) if cfg.cache_shards else None)
        if game.cache is not None:
            val_cache = _build_cache(patched, sites, val, cfg, folder / "val" if folder else None, None)
            log.info("latent cache: %s (%.1f MB train, %.1f MB val)", game.cache.names,
                     game.cache.nbytes() / 2**20, val_cache.nbytes() / 2**20 if val_cache else 0.0)

    ckpt = Path(run_dir) / CHECKPOINT if run_dir else None
    modules = {"perturbers": patched.perturbers, "disc": disc}
    optims = {"g": game.opt_g, "d": game.opt_d}
    if resume and ckpt is not None and ckpt.is_file():
        meta, states = load_checkpoint(ckpt, modules=modules, optimizers=optims, generator=gen)
        if meta["config"] != cfg.to_dict():
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
        best_state = copy.deepcopy(patched.perturbers.state_dict())

    with progress_bar(quiet) as bar:
        task = bar.add_task("APPLE (perturber vs discriminator)", total=cfg.epochs, info="",
                            completed=state["epoch"])
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if state["stopped"]:
                break
            row = _epoch(epoch, game)
            frame, auc = validate(patched, val, groups, cfg.seed, val_cache)
            row.update(_row(frame, auc))
            state["history"].append(row)
            log.info("apple epoch %d %s", epoch, {k: round(v, 4) for k, v in row.items()})
            private = cfg.max_probe_auc >= 1.0 or auc <= cfg.max_probe_auc  # NaN (no probe): not private
            feasible = (within_tolerance(row["val_dice"], state["base_dice"], cfg.tolerance) and private
                        and row["val_es_dice"] > state["best_score"])
            if cfg.selection == "last" or feasible:
                state.update(best_score=row["val_es_dice"], best_epoch=epoch, since_best=0)
                best_state = copy.deepcopy(patched.perturbers.state_dict())
            elif epoch > cfg.d_warmup:
                state["since_best"] += 1
            state["epoch"] = epoch
            if cfg.patience and state["since_best"] >= cfg.patience:
                state["stopped"] = True
                log.info("early stop after epoch %d (best epoch %d)", epoch, state["best_epoch"])
            if ckpt is not None:
                save_checkpoint(ckpt, modules=modules, states={"best": best_state}, optimizers=optims,
                                generator=gen, meta=state)
            bar.update(task, advance=1, info=f"L_seg {row['l_seg']:.3f} D acc {row['d_acc']:.2f} "
                                             f"probe AUC {auc:.2f} val ES-Dice {row['val_es_dice']:.3f}")
            if on_epoch is not None:
                on_epoch(row)
    patched.perturbers.load_state_dict(best_state)
    distributed.unwrap_children(patched.perturbers)
    patched.eval()
    return AppleResult(patched=patched, history=state["history"], selected_epoch=state["best_epoch"], sites=sites,
                       stopped_early=state["stopped"], base_val_dice=state["base_dice"],
                       cache=game.cache.names if game.cache else [], perturber=patched.perturber_specs())


def _epoch(epoch: int, game: _Game) -> dict:
    """One epoch of the game; returns the epoch's mean training statistics."""
    g = game
    patched, disc, cfg, sites, amp, freq = g.patched, g.disc, g.cfg, g.sites, g.amp, g.freq
    opt_g, opt_d = g.opt_g, g.opt_d
    warm = epoch <= cfg.d_warmup
    factor = 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) if cfg.cosine else 1.0
    for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * factor
    patched.train()
    disc.train()
    sums = {"l_seg": 0.0, "l_d": 0.0, "d_acc": 0.0, "d_entropy": 0.0, "pert_norm": 0.0, "mean_gap": 0.0}
    seen = 0
    dev = freq.device
    for batch in g.loader:
        if cfg.augment:  # on the CPU, where the generator lives
            x, y = augment_batch(batch["image"], batch["mask"], g.gen)
            batch = {**batch, "image": x, "mask": y}
        index = batch["index"]  # the cache is indexed on the CPU
        batch = to_device(batch, dev)
        a = batch["group"]
        ctx = g.cache.replay(index) if g.cache is not None else contextlib.nullcontext()
        with ctx, (torch.no_grad() if warm else contextlib.nullcontext()), amp.autocast():
            logits = segment(patched, batch).float()
        latents = [patched.latents[s][1] for s in sites]
        l_d = torch.zeros((), device=dev)
        if warm or cfg.objective != "grl":
            for _ in range(cfg.n_d):
                with amp.autocast():
                    d_logits = disc([f.detach() for f in latents]).float()
                l_d = known_ce(d_logits, a, cfg.d_label_smoothing)
                opt_d.zero_grad(set_to_none=True)
                l_d.backward()
                _clip(disc.parameters(), cfg.grad_clip)
                opt_d.step()
        per_sample = g.seg_loss(logits, batch["mask"])
        weights = balanced_weights(a, freq) if cfg.balanced_seg else torch.ones_like(per_sample)
        l_seg = (per_sample * weights).mean()
        pert = sum((fp.float() - fo.float()).pow(2).mean() for fo, fp in patched.latents.values()) / len(sites)
        mean_gap = None
        if warm:
            d_logits = d_logits.detach()
        else:
            if cfg.objective == "grl":
                with amp.autocast():
                    d_logits = disc([grad_reverse(f, cfg.alpha) for f in latents]).float()
                l_d = known_ce(d_logits, a, cfg.d_label_smoothing)
            else:
                with amp.autocast():
                    d_logits = disc(latents).float()
            l_g = l_seg + adversarial_term(cfg.objective, d_logits, a, cfg.alpha, cfg.beta)
            if cfg.lam:
                l_g = l_g + cfg.lam * pert
            if cfg.gamma:
                mean_gap = _mean_gap(patched, sites, a, len(freq))
                l_g = l_g + cfg.gamma * mean_gap
            opt_g.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            l_g.backward()
            _clip(patched.perturbers.parameters(), cfg.grad_clip)
            opt_g.step()
            if cfg.objective == "grl":
                _clip(disc.parameters(), cfg.grad_clip)
                opt_d.step()
        n = len(a)
        seen += n
        sums["l_seg"] += float(l_seg.detach()) * n
        sums["l_d"] += float(l_d.detach()) * n
        sums["d_acc"] += known_accuracy(d_logits.detach(), a) * n
        sums["d_entropy"] += float(known_entropy(d_logits.detach(), a)) * n
        sums["pert_norm"] += float(pert.detach()) * n
        if mean_gap is None:  # logged whatever gamma is: how far apart the groups' pooled means are
            with torch.no_grad():
                mean_gap = _mean_gap(patched, sites, a, len(freq))
        sums["mean_gap"] += float(mean_gap.detach()) * n
    return {"epoch": epoch, "warmup": warm, **{k: v / max(seen, 1) for k, v in sums.items()}}


def _mean_gap(patched: PatchedSegmentor, sites: list[str], groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The groups' distance in f_p's pooled statistics, in units of f_o's (see `group_mean_gap`)."""
    stats = [(pool_latent(patched.latents[s][1].float(), fixed_width=True),
              pool_latent(patched.latents[s][0].float(), fixed_width=True)) for s in sites]
    return group_mean_gap(torch.cat([p for p, _ in stats], 1), groups, num_groups,
                          reference=torch.cat([o for _, o in stats], 1))
