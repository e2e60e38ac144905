"""`groupdro`: Group distributionally robust fine-tuning (Sagawa et al., ICLR 2020).

One weight q_g per group. Each step: L_g = mean per-sample loss of group g in the batch,
q_g <- q_g * exp(eta * L_g) (groups absent from the batch: L_g = 0, q_g unchanged before
renormalising), q <- q / sum(q), loss = sum_g q_g L_g. Samples of unknown group add their
mean loss with weight (their share of the batch); they never enter q.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from applefair.baselines.base import Budget, FitResult, Method, finetune_copy, per_sample_seg_loss
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec


class GroupDROLoss:
    """Holds q across steps; `__call__(per_sample_loss, groups)` returns the robust loss."""

    def __init__(self, num_groups: int, eta: float = 0.01):
        self.eta = float(eta)
        self.q = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64)

    def group_losses(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Mean loss of each group over the global batch: under torchrun the per-group sums and
        counts are summed over the processes (differentiably), so every rank holds the same L_g
        and q, those of one process on the whole batch."""
        k = len(self.q)
        known = groups >= 0
        onehot = torch.nn.functional.one_hot(groups[known], k).to(losses.dtype)  # (n_known, K)
        sums = distributed.all_reduce_sum_grad(torch.cat([(onehot * losses[known, None]).sum(0), onehot.sum(0)]))
        return sums[:k] / sums[k:].clamp(min=1)

    def __call__(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        g_loss = self.group_losses(losses, groups)
        self.q = self.q.to(g_loss.device)
        with torch.no_grad():
            self.q = self.q * torch.exp(self.eta * g_loss.detach().double())
            self.q = self.q / self.q.sum()
        robust = (self.q.to(g_loss.dtype) * g_loss).sum()
        unknown = groups < 0
        if unknown.any():
            robust = robust + losses[unknown].mean() * unknown.float().mean()
        return robust


class GroupDRO(Method):
    name = "groupdro"
    summary = "GroupDRO fine-tune (q_g <- q_g exp(eta L_g))"
    defaults: dict = {"eta": 0.01}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        opts = self.options(options)
        dro = GroupDROLoss(groups.num_groups, eta=opts["eta"])
        fit = finetune_copy(net, spec, train, val, groups, budget,
                            lambda b, fwd: dro(per_sample_seg_loss(segment(fwd, b), b["mask"]), b["group"]),
                            "groupdro fine-tune", quiet)
        fit.extra = {"q": dro.q.cpu().tolist()}
        return fit
