"""One epoch of APPLE's game, and the players it is played by.

For each batch the frozen segmentor runs with the perturbers hooked in (from the latent cache when
it can); every discriminator takes `n_d` steps on sg(f) of the decoder inputs it reads; then the
perturbers take one step on L_seg + the adversarial term (averaged over the ensemble) + the entropy
term + the optional penalties (perturbation size, group-mean gap, group-distribution gap).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from applefair.apple.cache import LatentCache
from applefair.apple.config import AppleConfig
from applefair.apple.discriminator import build_discriminators, reset
from applefair.apple.losses import (
    SegLoss,
    adversarial_term,
    balanced_weights,
    entropy_term,
    fidelity_loss,
    grad_reverse,
    group_distribution_gap,
    group_mean_gap,
    known_accuracy,
    known_ce,
    known_entropy,
)
from applefair.apple.patch import PatchedSegmentor, latent_shapes, perturbers_for
from applefair.apple.perturber import PopulationNorm, latent_channels, to_grid
from applefair.data.augment import augment_batch
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed, samplers
from applefair.engine.device import module_device, to_device
from applefair.engine.precision import Precision, game_precision
from applefair.metrics.leakage import pool_latent
from applefair.models.forward import segment

log = logging.getLogger("applefair")


@dataclass
class Game:
    """The players and what they play with, built once per run."""

    patched: PatchedSegmentor
    discs: nn.ModuleList  # D_p, one or an ensemble (the plain modules; `steps` are what a step calls)
    steps: list[nn.Module]  # each discriminator as a step calls it (in DistributedDataParallel under torchrun)
    d_sites: list[str]  # the decoder inputs D_p reads (the perturbed sites, or every decoder input)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    seg_loss: SegLoss
    freq: torch.Tensor  # the training split's group frequencies (group-balanced L_seg)
    gen: torch.Generator  # data order and flips
    loader: DataLoader
    cache: LatentCache | None
    amp: Precision
    sites: list[str]  # the perturbed sites
    cfg: AppleConfig

    def modules(self) -> dict[str, nn.Module]:
        """What a checkpoint holds besides the optimisers."""
        return {"perturbers": self.patched.perturbers, "disc": self.discs}

    def norms(self) -> list[PopulationNorm]:
        return [m for m in self.patched.perturbers.modules() if isinstance(m, PopulationNorm)]


def decoder_inputs(spec_site: str, skip_sites: list[str]) -> list[str]:
    """Every input the decoder receives: the skip sites (shallow to deep), then the default site."""
    return list(dict.fromkeys([*skip_sites, spec_site]))


def _example_batch(dataset: SegmentationDataset, n: int = 2) -> dict:
    loader = DataLoader(dataset, batch_size=min(n, len(dataset)), shuffle=False, generator=torch.Generator())
    return next(iter(loader))


def build_game(net: nn.Module, sites: list[str], all_inputs: list[str], train: SegmentationDataset,
               groups: GroupSpec, cfg: AppleConfig, head: str, gen: torch.Generator) -> Game:
    """Perturbers, discriminator(s) and optimisers, sized from one example batch, on the device of `net`."""
    dev = module_device(net)
    example = to_device(_example_batch(train), dev)
    perturbers = perturbers_for(net, sites, example, cfg.width, cfg.perturber, cfg.max_params_ratio,
                                global_branch=cfg.global_branch, num_res_blocks=cfg.res_blocks,
                                normalize=cfg.normalize == "instance")
    d_sites = all_inputs if cfg.d_inputs == "all" else list(sites)
    shapes = latent_shapes(net, d_sites, example)
    patched = PatchedSegmentor(net, {s: p.to(dev) for s, p in perturbers.items()}, observe=d_sites)
    log.info("perturber(s): %s", patched.perturber_specs())
    discs = build_discriminators(cfg.d_kind, [latent_channels(shapes[s]) for s in d_sites], groups.num_groups,
                                 count=cfg.d_ensemble, hidden=cfg.d_hidden, dropout=cfg.d_dropout,
                                 spectral_norm=cfg.d_spectral_norm, pooling=cfg.d_pooling,
                                 dims=max(2, len(shapes[d_sites[0]]) - 2)).to(dev)  # 3 for (B, C, D, H, W)
    # under torchrun: DDP on each perturber (they run inside the frozen net's hooks) and on each D_p;
    # with one process both calls return the modules unchanged
    distributed.wrap_children(patched.perturbers)
    known = train.group_ids[train.group_ids >= 0]
    return Game(patched=patched, discs=discs, steps=[distributed.wrap(d) for d in discs], d_sites=d_sites,
                opt_g=torch.optim.Adam(patched.perturbers.parameters(), lr=cfg.lr_g),
                opt_d=torch.optim.Adam(discs.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999)),
                seg_loss=SegLoss(head), gen=gen,
                freq=torch.tensor(np.bincount(known, minlength=groups.num_groups) / max(len(known), 1),
                                  dtype=torch.float32, device=dev),
                loader=samplers.make_loader(train, cfg.batch_size, shuffle=True, generator=gen,
                                            drop_last=len(train) > cfg.batch_size, shards=cfg.cache_shards),
                cache=None, amp=game_precision(cfg.precision, dev), sites=sites, cfg=cfg)


def _clip(params, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)


@contextlib.contextmanager
def _frozen(modules: nn.ModuleList):
    """The discriminators' weights take no gradient inside (a term only the perturbers answer to)."""
    params = [p for p in modules.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def adversary_loss(game: Game, latents: list[torch.Tensor], a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the perturbers' adversarial + entropy loss, D_p's logits for logging), averaged over the ensemble.

    With `grl` the discriminators are trained by the same backward pass (their CE through the reversal);
    the entropy term is computed on latents that did not pass the reversal, with the discriminators'
    weights frozen, so that it raises D_p's entropy through the perturbers only."""
    cfg = game.cfg
    terms, shown = [], None
    for step in game.steps:
        with game.amp.autocast():
            inputs = [grad_reverse(f, cfg.alpha) for f in latents] if cfg.objective == "grl" else latents
            logits = step(inputs).float()
        terms.append(adversarial_term(cfg.objective, logits, a, cfg.alpha))
        shown = logits if shown is None else shown
    loss = torch.stack(terms).mean()
    if cfg.beta:
        with _frozen(game.discs), game.amp.autocast():
            plain = [step(latents).float() for step in game.steps]
        loss = loss + torch.stack([entropy_term(z, a, cfg.beta) for z in plain]).mean()
    return loss, shown


def distribution_gap(game: Game, a: torch.Tensor) -> torch.Tensor:
    """The groups' distribution distance at every perturbed site (standardised by f_o's spread), averaged."""
    cfg, patched = game.cfg, game.patched
    terms = []
    for s in game.sites:
        fo, fp = patched.latents[s]
        if cfg.dist_features == "pooled":
            po, pp = pool_latent(fo.float(), fixed_width=True), pool_latent(fp.float(), fixed_width=True)
            points = pp / po.detach().std(0).clamp_min(1e-6)
        else:  # every position of the latent is a point in channel space
            go, gp = to_grid(fo.float())[0], to_grid(fp.float())[0]
            spread = go.detach().transpose(0, 1).flatten(1).std(1).clamp_min(1e-6)
            points = (gp / spread.reshape(1, -1, *[1] * (gp.dim() - 2))).flatten(2).transpose(1, 2)  # 2-D or 3-D
        terms.append(group_distribution_gap(points, a, len(game.freq), cfg.dist_match, cfg.dist_blur))
    return torch.stack(terms).mean()


def group_shifts(game: Game, a: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """Per perturbed site, (the clean pass's f_p, each sample's move from its group's mean f_p to another group's,
    from the batch's means, detached); None when the batch does not hold two samples of at least two groups.
    With more than two groups each sample moves to the next group present (cyclically)."""
    present = [g for g in range(len(game.freq)) if int((a == g).sum()) >= 2]
    if len(present) < 2:
        return None
    target = {g: present[(i + 1) % len(present)] for i, g in enumerate(present)}
    shifts = {}
    for s in game.sites:
        fp = game.patched.latents[s][1].detach().float()
        means = {g: fp[a == g].mean(0) for g in present}
        move = torch.zeros_like(fp)
        for g in present:
            move[a == g] = means[target[g]] - means[g]
        shifts[s] = (game.patched.latents[s][1], move.to(game.patched.latents[s][1].dtype))
    return shifts


def _probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    return torch.sigmoid(logits) if head == "sigmoid" else torch.softmax(logits, 1)


def use_gap(game: Game, batch: dict, a: torch.Tensor, logits: torch.Tensor, replay) -> torch.Tensor:
    """Mean absolute change of the predicted probabilities when every perturbed decoder input of a sample is moved
    by its groups' mean difference (`group_shifts`): 0 when the decoder does not use the group's direction."""
    shifts = group_shifts(game, a)
    if shifts is None:
        return logits.sum() * 0.0
    seen = game.patched.latents  # the clean pass's latents, which the other terms read
    game.patched.shift = shifts
    try:
        with replay(), game.amp.autocast():
            moved = segment(game.patched, batch).float()
    finally:
        game.patched.shift = None
        game.patched.latents = seen
    known = a >= 0
    head = game.seg_loss.head
    return (_probs(moved[known], head) - _probs(logits[known], head)).abs().mean()


def mean_gap(game: Game, a: torch.Tensor) -> torch.Tensor:
    """The groups' distance in f_p's pooled statistics, in units of f_o's (see `group_mean_gap`)."""
    stats = [(pool_latent(game.patched.latents[s][1].float(), fixed_width=True),
              pool_latent(game.patched.latents[s][0].float(), fixed_width=True)) for s in game.sites]
    return group_mean_gap(torch.cat([p for p, _ in stats], 1), a, len(game.freq),
                          reference=torch.cat([o for _, o in stats], 1))


def play_epoch(epoch: int, game: Game) -> dict:
    """One epoch of the game; returns the epoch's mean training statistics."""
    g, cfg = game, game.cfg
    patched, amp, freq = g.patched, g.amp, g.freq
    warm = epoch <= cfg.d_warmup
    if cfg.d_reinit and epoch > 1 and (epoch - 1) % cfg.d_reinit == 0:  # a fresh adversary the perturbers
        for d in g.discs:  # have not yet adapted to
            reset(d)
        g.opt_d.state.clear()
    factor = 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) if cfg.cosine else 1.0
    for opt, lr in ((g.opt_g, cfg.lr_g), (g.opt_d, cfg.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * factor
    patched.train()
    for step in g.steps:
        step.train()
    sums = dict.fromkeys(("l_seg", "l_d", "d_acc", "d_entropy", "pert_norm", "mean_gap", "dist_gap", "use_gap"), 0.0)
    seen = 0
    dev = freq.device
    for batch in g.loader:
        if cfg.augment:  # on the CPU, where the generator lives
            x, y = augment_batch(batch["image"], batch["mask"], g.gen)
            batch = {**batch, "image": x, "mask": y}
        index = batch["index"]  # the cache is indexed on the CPU
        batch = to_device(batch, dev)
        a = batch["group"]
        def replay(index=index):
            return g.cache.replay(index) if g.cache is not None else contextlib.nullcontext()

        deployed = None
        if cfg.seg_target == "deployed":  # the deployed model's own output on this batch is L_seg's target
            with replay(), torch.no_grad(), patched.disabled(), amp.autocast():
                deployed = segment(patched, batch).float()
        with replay(), (torch.no_grad() if warm else contextlib.nullcontext()), amp.autocast():
            logits = segment(patched, batch).float()
        latents = [patched.latents[s][1] for s in g.d_sites]
        l_d = torch.zeros((), device=dev)
        if warm or cfg.objective != "grl":
            for _ in range(cfg.n_d):
                with amp.autocast():
                    d_logits = [step([f.detach() for f in latents]).float() for step in g.steps]
                l_d = torch.stack([known_ce(z, a, cfg.d_label_smoothing) for z in d_logits]).mean()
                g.opt_d.zero_grad(set_to_none=True)
                l_d.backward()
                _clip(g.discs.parameters(), cfg.grad_clip)
                g.opt_d.step()
            shown = d_logits[0]
        per_sample = (g.seg_loss(logits, batch["mask"]) if deployed is None
                      else fidelity_loss(logits, deployed, g.seg_loss.head))
        weights = balanced_weights(a, freq) if cfg.balanced_seg else torch.ones_like(per_sample)
        l_seg = (per_sample * weights).mean()
        pert = sum((patched.latents[s][1].float() - patched.latents[s][0].float()).pow(2).mean()
                   for s in g.sites) / len(g.sites)
        gap = dist = use = None
        if not warm:
            adv, shown = adversary_loss(g, latents, a)
            if cfg.objective == "grl":
                l_d = known_ce(shown, a, cfg.d_label_smoothing)
            l_g = l_seg + adv
            if cfg.lam:
                l_g = l_g + cfg.lam * pert
            if cfg.gamma:
                gap = mean_gap(g, a)
                l_g = l_g + cfg.gamma * gap
            if cfg.invariance:
                use = use_gap(g, batch, a, logits, replay)
                l_g = l_g + cfg.invariance * use
            if cfg.dist_match != "none":  # logged at weight 0 too: how far apart the groups' distributions are
                dist = distribution_gap(g, a)
                l_g = l_g + cfg.dist_weight * dist
            g.opt_g.zero_grad(set_to_none=True)
            g.opt_d.zero_grad(set_to_none=True)
            l_g.backward()
            _clip(patched.perturbers.parameters(), cfg.grad_clip)
            g.opt_g.step()
            if cfg.objective == "grl":
                _clip(g.discs.parameters(), cfg.grad_clip)
                g.opt_d.step()
        n = len(a)
        seen += n
        shown = shown.detach()
        sums["l_seg"] += float(l_seg.detach()) * n
        sums["l_d"] += float(l_d.detach()) * n
        sums["d_acc"] += known_accuracy(shown, a) * n
        sums["d_entropy"] += float(known_entropy(shown, a)) * n
        sums["pert_norm"] += float(pert.detach()) * n
        with torch.no_grad():  # logged whatever the weights: how far apart the groups are
            gap = mean_gap(g, a) if gap is None else gap
        sums["mean_gap"] += float(gap.detach()) * n
        if dist is not None:
            sums["dist_gap"] += float(dist.detach()) * n
        if use is not None:
            sums["use_gap"] += float(use.detach()) * n
    if seen and g.norms() and epoch == 1:  # the population statistics are in: normalise from now on
        for norm in g.norms():
            norm.finish(distributed.all_reduce_sum)
    row = {"epoch": epoch, "warmup": warm, **{k: v / max(seen, 1) for k, v in sums.items()}}
    if cfg.dist_match == "none" or warm:
        row["dist_gap"] = math.nan
    if not cfg.invariance or warm:
        row["use_gap"] = math.nan
    return row


def perturber_snapshot(game: Game) -> dict[str, torch.Tensor]:
    """The perturbers' state (weights and population statistics) as it is now."""
    return copy.deepcopy(game.patched.perturbers.state_dict())


__all__ = ["Game", "build_game", "decoder_inputs", "play_epoch", "perturber_snapshot"]
