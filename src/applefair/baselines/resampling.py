"""`resampling`: fine-tune with group-balanced sampling (WeightedRandomSampler).

Each known group gets the same expected share of every epoch (weights 1 / (K * n_g),
scaled so that samples of unknown group keep their share of the data). The loss is ERM's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import WeightedRandomSampler

from applefair.baselines.base import Budget, FitResult, Method, finetune_copy
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec


def balanced_weights(group_ids: np.ndarray) -> np.ndarray:
    """Per-sample sampling weights summing to 1: known groups equal in total, unknown kept at their share."""
    ids = np.asarray(group_ids)
    n = len(ids)
    known = ids >= 0
    weights = np.full(n, 1.0 / n)
    present, counts = np.unique(ids[known], return_counts=True)
    if len(present):
        share = known.mean()
        lookup = dict(zip(present.tolist(), counts.tolist(), strict=True))
        weights[known] = [share / (len(present) * lookup[g]) for g in ids[known]]
    return weights


class Resampling(Method):
    name = "resampling"
    summary = "fine-tune with group-balanced sampling"
    defaults: dict = {}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        self.options(options)
        loss_fn = DiceCELoss(sigmoid=True)
        weights = torch.as_tensor(balanced_weights(train.group_ids), dtype=torch.double)

        def sampler(gen: torch.Generator) -> WeightedRandomSampler:
            return WeightedRandomSampler(weights, num_samples=len(train), replacement=True, generator=gen)

        return finetune_copy(net, spec, train, val, groups, budget,
                             lambda b, fwd: loss_fn(segment(fwd, b), b["mask"]), "resampling fine-tune", quiet,
                             sampler_fn=sampler)
