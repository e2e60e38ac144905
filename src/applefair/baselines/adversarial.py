"""`adversarial`: retrain the segmentor with an attribute head behind a gradient-reversal layer.

The head (the same pooled-MLP architecture as APPLE's discriminator) reads the latent at the
model's site (the encoder output / bottleneck) through a gradient-reversal layer: the head
learns to predict the group, the encoder receives the negated gradient and learns to hide
it. Unlike APPLE, every segmentor weight changes. loss = L_seg + weight * CE(head(GRL(f)), a),
samples of unknown group excluded from the CE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from applefair.apple.discriminator import Discriminator
from applefair.apple.losses import grad_reverse, known_ce
from applefair.baselines.base import (
    Budget,
    FitResult,
    Method,
    Timer,
    count_params,
    count_trainable,
    finetune,
    start_copy,
)
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed
from applefair.engine.device import module_device, to_device
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec
from applefair.models.sites import find_module


class Adversarial(Method):
    name = "adversarial"
    summary = "retrain with an attribute head through gradient reversal"
    defaults: dict = {"weight": 0.5, "grl_scale": 1.0, "hidden": 64}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        opts = self.options(options)
        model = start_copy(net)
        dev = module_device(model)
        site = find_module(model, spec.site)
        captured: dict[str, torch.Tensor] = {}
        handle = site.register_forward_hook(lambda _m, _i, out: captured.__setitem__("f", out))
        with torch.no_grad():
            was = model.training
            model.eval()
            segment(model, to_device({k: (v[:2] if torch.is_tensor(v) else v)
                                      for k, v in _first_batch(train).items()}, dev))
            model.train(was)
        head = Discriminator(captured["f"].shape[1], groups.num_groups, hidden=int(opts["hidden"])).to(dev)
        head_step = distributed.wrap(head)  # DDP under torchrun: the head's gradients are averaged too
        loss_fn = DiceCELoss(sigmoid=True)

        def step(batch: dict, fwd: nn.Module) -> torch.Tensor:
            logits = segment(fwd, batch)
            adv = known_ce(head_step(grad_reverse(captured["f"], opts["grl_scale"])), batch["group"])
            return loss_fn(logits, batch["mask"]) + opts["weight"] * adv

        try:
            with Timer() as t:
                history, best = finetune(model, model, train, val, groups, budget, step, "adversarial retrain",
                                         quiet, extra_params=head.parameters(), train_modules=[head_step])
        finally:
            handle.remove()
            distributed.unwrap(head_step)
        return FitResult(model=model, trainable_params=count_trainable(model), seconds=t.seconds,
                         history=history, frozen=False, latent_sites=[spec.site], selected_epoch=best,
                         extra={"head_params": count_params(head.parameters())})


def _first_batch(data) -> dict:
    items = [data[i] for i in range(min(2, len(data)))]
    return torch.utils.data.default_collate(items)
