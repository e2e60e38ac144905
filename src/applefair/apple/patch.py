"""Attaching perturbers to a frozen segmentor with forward hooks, and saving them as a patch."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import nn

from applefair.apple.perturber import Perturber
from applefair.errors import InputError
from applefair.io import load_tensors, save_tensors
from applefair.models.sites import find_module


def freeze(net: nn.Module) -> nn.Module:
    """requires_grad=False everywhere and eval mode (frozen BatchNorm statistics)."""
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class PatchedSegmentor(nn.Module):
    """The frozen segmentor with f_p = f_o + G_p(f_o) at each site.

    After each forward, `latents[site]` holds (f_o, f_p), so losses can look at what the
    decoder receives. The wrapped network is kept in eval mode whatever `train()` is called.
    """

    def __init__(self, net: nn.Module, perturbers: Mapping[str, nn.Module]):
        super().__init__()
        self.net = freeze(net)
        self.sites = list(perturbers)
        self.perturbers = nn.ModuleDict({_key(s): p for s, p in perturbers.items()})
        self.latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.enabled = True
        self._handles = [find_module(net, s).register_forward_hook(self._hook(s)) for s in self.sites]

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise TypeError(f"site '{site}' outputs {type(output).__name__}, expected a tensor")
            if not self.enabled:
                self.latents[site] = (output, output)
                return output
            perturbed = output + self.perturbers[_key(site)](output)
            self.latents[site] = (output, perturbed)
            return perturbed
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.latents = {}
        return self.net(x)

    def train(self, mode: bool = True) -> PatchedSegmentor:
        super().train(mode)
        self.net.eval()
        return self

    def remove(self) -> None:
        """Detach the hooks; the wrapped network is then exactly the deployed one."""
        for h in self._handles:
            h.remove()
        self._handles = []


def _key(site: str) -> str:
    return site.replace(".", "__")


def perturbers_for(net: nn.Module, sites: list[str], example: torch.Tensor, width: int = 32
                   ) -> dict[str, Perturber]:
    """One fresh perturber per site, sized from the latent shapes of one example batch."""
    shapes: dict[str, torch.Size] = {}
    handles = [find_module(net, s).register_forward_hook(
        lambda _m, _i, out, s=s: shapes.__setitem__(s, out.shape)) for s in sites]
    try:
        with torch.no_grad():
            was = net.training
            net.eval()
            net(example)
            net.train(was)
    finally:
        for h in handles:
            h.remove()
    return {s: Perturber(shapes[s][1], width=width) for s in sites}


def save_patch(path: str | os.PathLike, patched: PatchedSegmentor, meta: Mapping) -> None:
    """The perturbers' weights plus their sites and config in the safetensors header."""
    tensors = {k: v for k, v in patched.perturbers.state_dict().items()}
    header = {"format": "applefair-patch/1", "sites": json.dumps(patched.sites),
              "meta": json.dumps(meta, default=str)}
    save_tensors(path, tensors, metadata=header)


def attach(net: nn.Module, path: str | os.PathLike) -> PatchedSegmentor:
    """Attach a saved patch (perturbers + sites) to the unchanged deployed model."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != "applefair-patch/1":
        raise InputError(f"{path}: not an applefair patch (missing format 'applefair-patch/1' in its header)")
    sites = json.loads(header["sites"])
    meta = json.loads(header.get("meta", "{}"))
    width = int(meta.get("apple", {}).get("width", 32))
    shapes = {s: tensors[f"{_key(s)}.out.weight"].shape[0] for s in sites}
    patched = PatchedSegmentor(net, {s: Perturber(c, width=width) for s, c in shapes.items()})
    try:
        patched.perturbers.load_state_dict(tensors)
    except RuntimeError as exc:
        raise InputError(f"{path}: patch weights do not fit ({str(exc).splitlines()[0]})") from None
    patched.meta = meta
    return patched.eval()
