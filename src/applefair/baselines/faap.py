"""`faap`: a FAAP-style input-space perturber on the frozen model (Wang et al., CVPR 2022).

APPLE's lineage: FAAP perturbs the *input image* of a frozen classifier so that a
discriminator cannot recover the sensitive attribute from the model's features. Here:
x' = x + eps * tanh(G(x)) with G a small U-shaped network (APPLE's perturber architecture,
zero-initialised output, so x' = x at the start); the discriminator reads the frozen model's
latent at its site; alternating steps

    L_D = CE(D(sg(f)), a)
    L_G = L_seg(model(x'), y) - alpha * CE(D(f), a) - beta * H(softmax(D(f)))

The deployed weights never change (checked by hash).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from applefair.apple.discriminator import Discriminator
from applefair.apple.losses import known_ce, known_entropy
from applefair.apple.patch import freeze
from applefair.apple.perturber import Perturber
from applefair.baselines.base import Budget, FitResult, Method, Timer, count_params, finetune
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed
from applefair.engine.device import module_device
from applefair.models.forward import segment
from applefair.models.registry import ModelSpec
from applefair.models.sites import find_module
from applefair.models.sliding import require_whole


class InputPerturbedSegmentor(nn.Module):
    """The frozen segmentor applied to x + eps * tanh(G(x)); the wrapped network stays in eval mode."""

    def __init__(self, net: nn.Module, perturber: nn.Module, eps: float):
        super().__init__()
        self.net = freeze(net)
        self.perturber = perturber
        self.eps = float(eps)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.eps * torch.tanh(self.perturber(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.perturb(x))

    def segment_batch(self, batch: dict) -> torch.Tensor:
        return segment(self.net, {**batch, "image": self.perturb(batch["image"])})

    def train(self, mode: bool = True) -> InputPerturbedSegmentor:
        super().train(mode)
        self.net.eval()
        return self


class FAAP(Method):
    name = "faap"
    summary = "FAAP-style input-space perturber on the frozen model"
    defaults: dict = {"alpha": 1.0, "beta": 1.0, "eps": 0.1, "width": 8, "lr_d": 1e-3, "hidden": 64}

    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        opts = self.options(options)
        channels, dims = train[0]["image"].shape[0], train[0]["image"].dim() - 1
        require_whole(net, train[0]["image"].shape, "faap")  # volumes: one latent per sample, no windows
        dev = module_device(net)
        model = InputPerturbedSegmentor(copy.deepcopy(net),
                                        Perturber(channels, width=int(opts["width"]), dims=dims).to(dev), opts["eps"])
        site = find_module(model.net, spec.site)
        captured: dict[str, torch.Tensor] = {}
        handle = site.register_forward_hook(lambda _m, _i, out: captured.__setitem__("f", out))
        with torch.no_grad():
            model.eval()
            model(train[0]["image"][None].to(dev))
        disc = Discriminator(captured["f"].shape[1], groups.num_groups, hidden=int(opts["hidden"])).to(dev)
        disc_step = distributed.wrap(disc)  # DDP under torchrun
        opt_d = torch.optim.Adam(disc.parameters(), lr=opts["lr_d"])
        seg_loss = DiceCELoss(sigmoid=True)

        def step(batch: dict, fwd: nn.Module) -> torch.Tensor:
            logits = segment(fwd, batch)
            f, a = captured["f"], batch["group"]
            l_d = known_ce(disc_step(f.detach()), a)
            opt_d.zero_grad(set_to_none=True)
            l_d.backward()
            opt_d.step()
            d_logits = disc_step(f)
            return seg_loss(logits, batch["mask"]) - opts["alpha"] * known_ce(d_logits, a) \
                - opts["beta"] * known_entropy(d_logits, a)

        try:
            with Timer() as t:
                history, best = finetune(model, model.perturber, train, val, groups, budget, step,
                                         "faap input perturber", quiet, train_modules=[disc_step])
        finally:
            handle.remove()
            distributed.unwrap(disc_step)
        return FitResult(model=model.eval(), trainable_params=count_params(model.perturber.parameters()),
                         seconds=t.seconds, history=history, frozen=True, deployed=model.net, latent_sites=[spec.site],
                         selected_epoch=best, extra={"disc_params": count_params(disc.parameters())})
