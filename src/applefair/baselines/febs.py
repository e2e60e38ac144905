"""`febs`: Fair Error-Bound Scaling (Harvard-FairSeg, Tian et al., ICLR 2024), with its defect fixed.

Per batch: L_g = Dice loss of group g's samples; w_g = tanh((min_k L_k / L_g)^gamma), no
gradient through w; each sample's probability map is multiplied by its group's w before the
Dice loss (groups with larger error get smaller maps, hence larger Dice loss and gradient);
loss = ce_weight * BCE + dice_weight * FairDice (0.2 / 0.8 as in their SAMed setup).

The published code takes the min over *all* groups, and a group missing from the batch
contributes L = 0: the min is 0, every w is 0, every map is 0, and the Dice part is stuck at
1 with zero gradient. Here the min runs over the groups present in the batch only, and
L is offset by a small epsilon so that a perfectly segmented group does not do the same.
Samples of unknown group are left unscaled (w = 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from applefair.baselines.base import Budget, FitResult, Method, finetune_copy
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec

EPS = 1e-6


def febs_weights(group_losses: torch.Tensor, present: torch.Tensor, gamma: float = 1.0,
                 naive: bool = False) -> torch.Tensor:
    """w_g = tanh((min_k L_k / L_g)^gamma). `naive=True` reproduces the published min over all groups."""
    losses = group_losses.detach()
    if naive:
        low = losses.min()  # absent groups hold 0 here
        return torch.tanh((low / losses.clamp(min=1e-12)) ** gamma)
    if not present.any():
        return torch.ones_like(losses)
    low = losses[present].min()
    w = torch.tanh(((low + EPS) / (losses + EPS)) ** gamma)
    return torch.where(present, w, torch.ones_like(w))


def febs_loss(logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, num_groups: int,
              gamma: float = 1.0, ce_weight: float = 0.2, dice_weight: float = 0.8,
              naive: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-group weights) for one batch; `groups` holds ids (-1 unknown)."""
    dice = DiceLoss(sigmoid=True, reduction="none")(logits, target).reshape(len(logits))
    known = groups >= 0
    onehot = F.one_hot(groups[known], num_groups).to(dice.dtype)
    # over the global batch under torchrun (w carries no gradient, so a plain sum over processes)
    sums = distributed.all_reduce_sum(torch.cat([(onehot * dice[known, None]).sum(0), onehot.sum(0)]).detach())
    counts = sums[num_groups:]
    group_losses = sums[:num_groups] / counts.clamp(min=1)
    w = febs_weights(group_losses, counts > 0, gamma, naive)
    per_sample_w = torch.ones(len(logits), dtype=logits.dtype, device=logits.device)
    per_sample_w[known] = w[groups[known]].to(logits.dtype)
    scaled = torch.sigmoid(logits) * per_sample_w.view(-1, *([1] * (logits.dim() - 1)))
    fair_dice = DiceLoss(sigmoid=False)(scaled, target)
    ce = F.binary_cross_entropy_with_logits(logits, target)
    return ce_weight * ce + dice_weight * fair_dice, w


class FEBS(Method):
    name = "febs"
    summary = "Fair Error-Bound Scaling fine-tune (missing-group defect fixed)"
    defaults: dict = {"gamma": 1.0, "ce_weight": 0.2, "dice_weight": 0.8}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        opts = self.options(options)

        def step(batch: dict, fwd: nn.Module) -> torch.Tensor:
            loss, _ = febs_loss(segment(fwd, batch), batch["mask"], batch["group"], groups.num_groups, **opts)
            return loss

        return finetune_copy(net, spec, train, val, groups, budget, step, "febs fine-tune", quiet)
