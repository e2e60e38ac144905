"""`apple`: this project's method, through `applefair.apple.trainer.train_apple` (its public API).

The adapter only maps the shared budget onto `AppleConfig` (epochs, batch size, seed,
selection tolerance, flips; the budget's `lr` is *not* forwarded, APPLE keeps its own lr_g / lr_d)
and passes the method options through as further `AppleConfig` fields. The deployed
weights are checked by hash.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

from torch import nn

from applefair.baselines.base import Budget, FitResult, Method, Timer, count_params
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.io import state_dict_hash
from applefair.errors import InputError
from applefair.models.registry import ModelSpec
from applefair.models.sites import find_module


class Apple(Method):
    name = "apple"
    summary = "APPLE: latent perturber on the frozen model vs a discriminator"
    defaults: dict = {}

    def options(self, given: Mapping | None) -> dict:
        from applefair.apple.trainer import AppleConfig

        allowed = {f.name for f in dataclasses.fields(AppleConfig)}
        given = dict(given or {})
        bad = sorted(set(given) - allowed)
        if bad:
            raise InputError(f"method 'apple': unknown option(s) {', '.join(bad)} "
                             f"(allowed: AppleConfig fields {', '.join(sorted(allowed))})")
        return given

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False) -> FitResult:
        from applefair.apple.trainer import AppleConfig, train_apple

        opts = self.options(options)
        allowed = {f.name for f in dataclasses.fields(AppleConfig)}
        shared = {"epochs": budget.epochs, "batch_size": budget.batch_size, "seed": budget.seed,
                  "tolerance": budget.tolerance, "augment": budget.augment}
        cfg = AppleConfig(**{**{k: v for k, v in shared.items() if k in allowed}, **opts})
        deployed_hash = state_dict_hash(net)
        with Timer() as t:
            out = train_apple(copy.deepcopy(net), spec.site, train, val, groups, cfg, quiet=quiet)
        patched, history, check = _unpack(out)
        frozen = state_dict_hash(patched.net) == deployed_hash
        if not frozen:
            raise RuntimeError("apple: the deployed segmentor's weights changed during training")
        site = (list(getattr(patched, "sites", [])) or [spec.site])[0]
        return FitResult(model=patched.eval(), trainable_params=count_params(patched.perturbers.parameters()),
                         seconds=t.seconds, history=list(history), frozen=True,
                         latent_module=find_module(patched.net, site),
                         selected_epoch=int(check.get("selected_epoch", 0)) if isinstance(check, dict) else 0,
                         extra={"sites": list(getattr(patched, "sites", [spec.site]))})


def _unpack(out) -> tuple:
    """train_apple returns (patched, history, check); accept an object with those attributes too."""
    if isinstance(out, tuple):
        return (*out, [], {})[:3] if len(out) < 3 else out[:3]
    patched = getattr(out, "patched", None) or out.model
    return patched, getattr(out, "history", []), getattr(out, "check", {})
