"""`erm`: plain fine-tuning of the deployed model with its own loss (the control).

Every other method is compared against this one: same starting weights, same budget,
same selection rule, no group information in the loss.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from monai.losses import DiceCELoss
from torch import nn

from applefair.baselines.base import Budget, FitResult, Method, finetune_copy
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec


class ERM(Method):
    name = "erm"
    summary = "plain fine-tune of the deployed model (control)"
    defaults: dict = {}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        self.options(options)
        loss_fn = DiceCELoss(sigmoid=True)
        return finetune_copy(net, spec, train, val, groups, budget,
                             lambda b, fwd: loss_fn(segment(fwd, b), b["mask"]), "erm fine-tune", quiet)
