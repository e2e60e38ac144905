"""`subgroup`: one fine-tuned copy of the deployed model per group; the group is known at inference.

Copy g is fine-tuned on group g's training samples only for the budget's epochs (so the
total number of sample visits equals one ERM run) and selected on group g's validation Dice.
At inference a router sends each sample to its group's copy; samples of unknown group go to
the unchanged deployed model. It needs the attribute at test time, which the other methods
do not, and ships K full models.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from applefair.baselines.base import Budget, FitResult, Method, Timer, count_trainable, finetune, start_copy
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec


class GroupRoutedSegmentor(nn.Module):
    """Routes each sample of a batch to `experts[group]` (`fallback` for unknown groups).

    It needs each sample's group, so it predicts through `applefair.models.segment(model, batch)`
    (which calls `segment_batch`); calling it on bare images is an error.
    """

    def __init__(self, experts: list[nn.Module], fallback: nn.Module):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.fallback = fallback

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("GroupRoutedSegmentor needs each sample's group: call applefair.models.segment(model, batch)")

    def segment_batch(self, batch: dict) -> torch.Tensor:
        groups = torch.as_tensor(batch["group"])
        n = len(groups)
        out: torch.Tensor | None = None
        for gid in torch.unique(groups).tolist():
            rows = (groups == gid).nonzero().flatten()
            sub = {k: (v[rows] if torch.is_tensor(v) and v.dim() and len(v) == n else v) for k, v in batch.items()}
            model = self.experts[gid] if 0 <= gid < len(self.experts) else self.fallback
            logits = segment(model, sub)
            if out is None:
                out = logits.new_zeros((n, *logits.shape[1:]))
            out[rows] = logits
        return out


def group_subset(data: SegmentationDataset, groups: GroupSpec, gid: int) -> SegmentationDataset:
    """The samples of group `gid` as a dataset of their own."""
    return SegmentationDataset(data.frame[data.group_ids == gid], groups)


class Subgroup(Method):
    name = "subgroup"
    summary = "one fine-tuned copy per group, routed by the known group"
    defaults: dict = {}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        self.options(options)
        loss_fn = DiceCELoss(sigmoid=True)
        experts, history, selected = [], [], {}
        with Timer() as t:
            for gid in range(groups.num_groups):
                model = start_copy(net)
                tr, va = group_subset(train, groups, gid), group_subset(val, groups, gid)
                if len(tr) < 2 or len(va) < 1:  # too few samples: keep the deployed weights for this group
                    experts.append(model.eval())
                    selected[groups.name(gid)] = 0
                    continue
                hist, best = finetune(model, model, tr, va, groups, budget,
                                      lambda b, fwd: loss_fn(segment(fwd, b), b["mask"]),
                                      f"subgroup fine-tune ({groups.name(gid)})", quiet)
                history += [{**row, "group": groups.name(gid)} for row in hist]
                selected[groups.name(gid)] = best
                experts.append(model)
            fallback = copy.deepcopy(net).eval()
            routed = GroupRoutedSegmentor(experts, fallback).eval()
        return FitResult(model=routed, trainable_params=sum(count_trainable(e) for e in experts),
                         seconds=t.seconds, history=history, frozen=False, latent_sites=None,
                         selected_epoch=max(selected.values(), default=0), extra={"selected_per_group": selected})
