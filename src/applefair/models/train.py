"""ERM training of the segmentor that will be 'deployed' (Dice + BCE, best on validation)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import DataLoader

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.metrics.evaluate import predict_scores
from applefair.models.registry import segment
from applefair.progress import progress_bar
from applefair.seeding import seed_everything

log = logging.getLogger("applefair")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True  # random flips


def augment_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips (per batch; vertical flips would break depth attenuation)."""
    if torch.rand(1, generator=g).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def train_segmentor(net: nn.Module, train: SegmentationDataset, val: SegmentationDataset, groups: GroupSpec,
                    cfg: TrainConfig, quiet: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train `net` in place by ERM; returns the best-on-validation-Dice weights and the history."""
    gen = seed_everything(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=len(train) > cfg.batch_size)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=cfg.epochs * len(loader), power=0.9)
    best, best_state, history = -1.0, None, []
    with progress_bar(quiet) as bar:
        task = bar.add_task("train deployed (ERM)", total=cfg.epochs, info="")
        for epoch in range(cfg.epochs):
            net.train()
            total = 0.0
            for batch in loader:
                x, y = batch["image"], batch["mask"]
                if cfg.augment:
                    x, y = augment_batch(x, y, gen)
                loss = loss_fn(segment(net, {**batch, "image": x, "mask": y}), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(x)
            val_dice = float(predict_scores(net, val, groups)["dice"].mean())
            history.append({"epoch": epoch + 1, "loss": total / len(train), "val_dice": val_dice})
            log.info("erm epoch %d loss %.4f val_dice %.4f", epoch + 1, total / len(train), val_dice)
            if val_dice > best:
                best, best_state = val_dice, copy.deepcopy(net.state_dict())
            bar.update(task, advance=1, info=f"loss {total / len(train):.3f} val Dice {val_dice:.3f}")
    net.load_state_dict(best_state)
    return net.eval(), history
