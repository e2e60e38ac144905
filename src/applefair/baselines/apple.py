"""`apple`: this project's method, through `applefair.apple.trainer.train_apple` (its public API).

The adapter only maps the shared budget onto `AppleConfig` (epochs, batch size, seed,
selection tolerance, flips; the budget's `lr` is *not* forwarded, APPLE keeps its own lr_g / lr_d)
and passes the method options through as further `AppleConfig` fields. `mitigate` runs APPLE
through this adapter too (with a run folder to checkpoint into), so there is one way to run it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

from torch import nn

from applefair.baselines.base import Budget, FitResult, Method, Timer, count_params
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.config import validate_settings
from applefair.models.registry import ModelSpec
from applefair.models.sliding import require_whole


class Apple(Method):
    name = "apple"
    summary = "APPLE: latent perturber on the frozen model vs a discriminator"
    defaults: dict = {}

    def options(self, given: Mapping | None) -> dict:
        """APPLE's options are `AppleConfig` fields (validated as such); those not given come from the budget."""
        from applefair.apple.config import AppleConfig

        given = dict(given or {})
        validate_settings(given, AppleConfig, f"method '{self.name}'")
        return given

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        from applefair.apple.config import AppleConfig
        from applefair.apple.trainer import train_apple

        shared = {"epochs": budget.epochs, "batch_size": budget.batch_size, "seed": budget.seed,
                  "tolerance": budget.tolerance, "augment": budget.augment}
        cfg = AppleConfig(**{**shared, **self.options(options)})
        if len(train):
            require_whole(net, train[0]["image"].shape, "APPLE")  # volumes: one latent per sample, no windows
        with Timer() as t:
            res = train_apple(copy.deepcopy(net), spec.site, train, val, groups, cfg, quiet=quiet, head=spec.head,
                              run_dir=run_dir, resume=resume, skip_sites=spec.skip_sites)
        patched = res.patched.eval()
        return FitResult(model=patched, trainable_params=count_params(patched.perturbers.parameters()),
                         seconds=t.seconds, history=list(res.history), frozen=True, deployed=patched.net,
                         latent_sites=list(res.sites), selected_epoch=res.selected_epoch,
                         extra=res.summary())
