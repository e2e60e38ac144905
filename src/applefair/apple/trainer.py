"""Training APPLE: alternating discriminator and perturber steps on a frozen segmentor."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import DataLoader

from applefair.apple.discriminator import Discriminator
from applefair.apple.losses import known_accuracy, known_ce, known_entropy
from applefair.apple.patch import PatchedSegmentor, perturbers_for
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.io import state_dict_hash
from applefair.metrics.evaluate import predict_scores
from applefair.metrics.fairness import fairness_summary
from applefair.models.registry import segment
from applefair.progress import progress_bar
from applefair.seeding import seed_everything

log = logging.getLogger("applefair")


@dataclass
class AppleConfig:
    """APPLE's knobs. alpha weighs -CE(D_p), beta the entropy term, lam the perturbation norm."""

    epochs: int = 30
    batch_size: int = 16
    alpha: float = 1.0
    beta: float = 1.0
    lam: float = 0.0
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    n_d: int = 1  # discriminator steps per perturber step
    width: int = 32
    sites: list[str] = field(default_factory=list)  # empty: the model's default site
    tolerance: float = 0.01  # selection: overall val Dice may fall at most this below the deployed model's
    seed: int = 0


def _selection_score(summary: dict) -> float:
    return summary["fairness"].get("es_dice_sum", summary["overall"]["dice"])


def train_apple(net: nn.Module, default_site: str, train: SegmentationDataset, val: SegmentationDataset,
                groups: GroupSpec, cfg: AppleConfig, quiet: bool = False
                ) -> tuple[PatchedSegmentor, list[dict], dict]:
    """Fit perturber(s) and a discriminator per site; the segmentor's weights never change.

    Returns the patched model (best epoch on validation: highest ES-Dice among epochs whose
    overall Dice is within `tolerance` of the deployed model's; epoch 0 is the unchanged model),
    the per-epoch history, and a check dict with the hash of the frozen weights before/after.
    """
    gen = seed_everything(cfg.seed)
    sites = cfg.sites or [default_site]
    hash_before = state_dict_hash(net)
    example = train[0]["image"][None]
    patched = PatchedSegmentor(net, perturbers_for(net, sites, example, cfg.width))
    with torch.no_grad():
        patched(example.repeat(2, 1, 1, 1))
    discs = nn.ModuleDict({str(i): Discriminator(patched.latents[s][1].shape[1], groups.num_groups)
                           for i, s in enumerate(sites)})
    opt_g = torch.optim.Adam(patched.perturbers.parameters(), lr=cfg.lr_g)
    opt_d = torch.optim.Adam(discs.parameters(), lr=cfg.lr_d)
    seg_loss = DiceCELoss(sigmoid=True)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=len(train) > cfg.batch_size)

    def validate() -> dict:
        return fairness_summary(predict_scores(patched, val, groups), groups.attribute, groups.groups)

    base = validate()
    floor = base["overall"]["dice"] - cfg.tolerance
    best_score, best_epoch = _selection_score(base), 0
    best_state = copy.deepcopy(patched.perturbers.state_dict())
    history = [{"epoch": 0, "val_dice": base["overall"]["dice"], "val_es_dice": best_score}]
    with progress_bar(quiet) as bar:
        task = bar.add_task("APPLE (perturber vs discriminator)", total=cfg.epochs, info="")
        for epoch in range(1, cfg.epochs + 1):
            patched.train()
            discs.train()
            sums = {"l_seg": 0.0, "l_d": 0.0, "d_acc": 0.0, "d_entropy": 0.0}
            for batch in loader:
                x, y, a = batch["image"], batch["mask"], batch["group"]
                logits = segment(patched, batch)
                latents = [patched.latents[s][1] for s in sites]
                for _ in range(cfg.n_d):  # discriminator: recover the group from sg(f_p)
                    l_d = sum(known_ce(discs[str(i)](f.detach()), a) for i, f in enumerate(latents))
                    opt_d.zero_grad(set_to_none=True)
                    l_d.backward()
                    opt_d.step()
                l_seg = seg_loss(logits, y)
                d_logits = [discs[str(i)](f) for i, f in enumerate(latents)]
                l_adv = sum(known_ce(d, a) for d in d_logits)
                l_ent = sum(known_entropy(d, a) for d in d_logits)
                l_g = l_seg - cfg.alpha * l_adv - cfg.beta * l_ent
                if cfg.lam:
                    l_g = l_g + cfg.lam * sum((fp - fo).pow(2).mean() for fo, fp in patched.latents.values())
                opt_g.zero_grad(set_to_none=True)
                l_g.backward()
                opt_g.step()
                n = len(x)
                sums["l_seg"] += float(l_seg) * n
                sums["l_d"] += float(l_d) * n
                sums["d_acc"] += known_accuracy(d_logits[0].detach(), a) * n
                sums["d_entropy"] += float(l_ent) / len(sites) * n
            row = {"epoch": epoch, **{k: v / len(train) for k, v in sums.items()}}
            summary = validate()
            row["val_dice"] = summary["overall"]["dice"]
            row["val_es_dice"] = _selection_score(summary)
            history.append(row)
            log.info("apple epoch %d %s", epoch, {k: round(v, 4) for k, v in row.items()})
            if row["val_dice"] >= floor and row["val_es_dice"] > best_score:
                best_score, best_epoch = row["val_es_dice"], epoch
                best_state = copy.deepcopy(patched.perturbers.state_dict())
            bar.update(task, advance=1, info=f"L_seg {row['l_seg']:.3f} D acc {row['d_acc']:.2f} "
                                             f"val ES-Dice {row['val_es_dice']:.3f}")
    patched.perturbers.load_state_dict(best_state)
    patched.eval()
    hash_after = state_dict_hash(patched.net)
    check = {"hash_before": hash_before, "hash_after": hash_after, "unchanged": hash_before == hash_after,
             "selected_epoch": best_epoch, "sites": sites}
    if not check["unchanged"]:
        raise RuntimeError("the deployed segmentor's weights changed during APPLE training")
    return patched, history, check
