"""`erm`: plain fine-tuning of the deployed model with its own loss (the control).

Every other method is compared against this one: same starting weights, same budget,
same selection rule, no group information in the loss.
"""

from __future__ import annotations

from collections.abc import Mapping

from monai.losses import DiceCELoss
from torch import nn

from applefair.baselines.base import (
    Budget,
    FitResult,
    Method,
    Timer,
    count_trainable,
    finetune,
    start_copy,
)
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.models.registry import ModelSpec, segment
from applefair.models.sites import find_module


class ERM(Method):
    name = "erm"
    summary = "plain fine-tune of the deployed model (control)"
    defaults: dict = {}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False) -> FitResult:
        self.options(options)
        model = start_copy(net)
        loss_fn = DiceCELoss(sigmoid=True)
        with Timer() as t:
            history, best = finetune(model, model, train, val, groups, budget,
                                     lambda b, fwd: loss_fn(segment(fwd, b), b["mask"]), "erm fine-tune", quiet)
        return FitResult(model=model, trainable_params=count_trainable(model), seconds=t.seconds,
                         history=history, frozen=False, latent_module=find_module(model, spec.site),
                         selected_epoch=best)
