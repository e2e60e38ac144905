"""Attaching perturbers to a frozen segmentor with forward hooks, and saving them as a patch."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from applefair.apple.perturber import build_perturber, latent_channels, latent_dims
from applefair.engine.io import load_tensors, save_tensors, state_dict_hash
from applefair.errors import InputError
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

    def __init__(self, net: nn.Module, perturbers: Mapping[str, nn.Module], observe: Sequence[str] = ()):
        super().__init__()
        self.net = freeze(net)
        self.sites = list(perturbers)
        self.perturbers = nn.ModuleDict({_key(s): p for s, p in perturbers.items()})
        self.latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.enabled = True
        # (clean f_p, move) per site: the site returns f_p + move instead (a training loss's what-if)
        self.shift: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        taken = [s for s in self.sites if getattr(find_module(net, s), "_applefair_patched", False)]
        if taken:  # two live patches on one site would silently stack their perturbations
            raise InputError(f"site(s) {', '.join(taken)} already carry a fairness patch; call .remove() on the "
                             "earlier patched model first")
        self._handles = [find_module(net, s).register_forward_hook(self._hook(s)) for s in self.sites]
        for s in self.sites:
            find_module(net, s)._applefair_patched = True
        # other decoder inputs a training loss reads (not perturbed): latents[s] = (output, output)
        self.observed = [s for s in observe if s not in self.sites]
        self._observers = [find_module(net, s).register_forward_hook(self._observer(s)) for s in self.observed]

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise TypeError(f"site '{site}' outputs {type(output).__name__}, expected a tensor")
            if not self.enabled:
                self.latents[site] = (output, output)
                return output
            if self.shift is not None and site in self.shift:  # a counterfactual translation (training only):
                base, move = self.shift[site]  # the clean pass's f_p moved, so that each input moves exactly once
                return base + move
            perturbed = output + self.perturbers[_key(site)](output)
            self.latents[site] = (output, perturbed)
            return perturbed
        return hook

    def _observer(self, site: str):
        def hook(_module, _inputs, output):
            if torch.is_tensor(output):
                self.latents[site] = (output, output)
        return hook

    def forward(self, *args, **kwargs):
        self.latents = {}
        return self.net(*args, **kwargs)

    def train(self, mode: bool = True) -> PatchedSegmentor:
        super().train(mode)
        self.net.eval()
        return self

    @contextmanager
    def disabled(self) -> Iterator[PatchedSegmentor]:
        """Inside, the perturbers are switched off: the model computes exactly the deployed model's output."""
        was = self.enabled
        self.enabled = False
        try:
            yield self
        finally:
            self.enabled = was

    def perturber_specs(self) -> dict[str, dict]:
        """Each site's perturber spec (kind, channels, width, ...): what rebuilds it from a patch."""
        return {s: self.perturbers[_key(s)].spec() for s in self.sites}

    def remove(self) -> None:
        """Detach the hooks; the wrapped network is then exactly the deployed one."""
        for h in self._handles:
            h.remove()
        if self._handles:
            for s in self.sites:
                find_module(self.net, s)._applefair_patched = False
        self._handles = []
        self.stop_observing()

    def stop_observing(self) -> None:
        """Detach the hooks that record the non-perturbed decoder inputs (a training loss's view only)."""
        for h in getattr(self, "_observers", []):
            h.remove()
        self._observers = []
        self.observed = []


def _key(site: str) -> str:
    return site.replace(".", "__")


def latent_shapes(net: nn.Module, sites: list[str], batch: dict) -> dict[str, torch.Size]:
    """The output shape at each site for one example batch (frozen net, eval mode, no grad)."""
    from applefair.models.forward import segment

    shapes: dict[str, torch.Size] = {}
    handles = [find_module(net, s).register_forward_hook(
        lambda _m, _i, out, s=s: shapes.__setitem__(s, out.shape)) for s in sites]
    try:
        with torch.no_grad():
            was = net.training
            net.eval()
            segment(net, batch)
            net.train(was)
    finally:
        for h in handles:
            h.remove()
    missing = [s for s in sites if s not in shapes]
    if missing:
        raise InputError(f"site(s) {', '.join(missing)} are not run by the model's forward pass")
    return shapes


# `kind="auto"` tries these in order: the paper's U shape at width 32, then narrower; where none fits the budget it
# keeps the first (the defaults ablation: the two-conv perturber an older rule fell back to cost most of the effect)
AUTO_CANDIDATES: tuple[tuple[str, int], ...] = (("unet", 32), ("unet", 16), ("unet", 8))


def perturbers_for(net: nn.Module, sites: list[str], example: torch.Tensor | dict, width: int = 32,
                   kind: str = "unet", max_params_ratio: float = 0.05, **kwargs) -> dict[str, nn.Module]:
    """One fresh perturber per site, sized from the latent shapes of one example batch.

    `kind="auto"` (with `width` ignored) picks the first of `AUTO_CANDIDATES` (the paper's U shape at width
    32, 16, 8) whose perturbers hold at most `max_params_ratio` of the deployed model's parameters, and the
    first (width 32) where none does: a patch should stay small next to a large model (width 32 is 1.7% of a
    SAM ViT-B, width 16 2.5% of a 26 M U-Net), but on a small model the effect comes first (docs/ablation.md:
    on the tiny SAM-like model a two-conv perturber within the budget lost most of the gap's reduction).
    `num_res_blocks` applies to U-shaped perturbers only.
    """
    batch = example if isinstance(example, dict) else {"image": example}
    shapes = latent_shapes(net, sites, batch)

    def build(k: str, w: int) -> dict[str, nn.Module]:
        extra = {key: v for key, v in kwargs.items() if k == "unet" or key != "num_res_blocks"}
        return {s: build_perturber({"kind": k, "channels": latent_channels(shapes[s]), "width": w, **extra,
                                    **({"dims": 3} if latent_dims(shapes[s]) == 3 else {})}) for s in sites}

    if kind != "auto":
        return build(kind, width)
    budget = max_params_ratio * sum(p.numel() for p in net.parameters())
    # sizing leaves the RNG where it was, so that `auto` initialises exactly what naming its choice would
    with torch.random.fork_rng(devices=[]):
        chosen = next((c for c in AUTO_CANDIDATES
                       if sum(p.numel() for m in build(*c).values() for p in m.parameters()) <= budget),
                      AUTO_CANDIDATES[0])
    return build(*chosen)


def save_patch(path: str | os.PathLike, patched: PatchedSegmentor, meta: Mapping) -> None:
    """The perturbers' weights plus their sites, specs, group spec and config in the safetensors header."""
    tensors = {k: v for k, v in patched.perturbers.state_dict().items()}
    specs = patched.perturber_specs()
    header = {"format": "applefair-patch/1", "sites": json.dumps(patched.sites),
              "perturbers": json.dumps(specs), "meta": json.dumps(meta, default=str)}
    if "groups" in meta:
        header["groups"] = json.dumps(meta["groups"])
    save_tensors(path, tensors, metadata=header)


def read_patch_header(path: str | os.PathLike) -> dict:
    """The header of a patch file (format, sites, perturbers, groups, meta), JSON-decoded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    if header.get("format") != "applefair-patch/1":
        raise InputError(f"{path}: not an applefair patch (missing format 'applefair-patch/1' in its header)")
    return {k: (json.loads(v) if k != "format" else v) for k, v in header.items()}


class PatchMismatchWarning(UserWarning):
    """A patch attached (with `strict=False`) to weights other than those it was fitted on."""


def check_fits(net: nn.Module, meta: Mapping, path: str | os.PathLike, strict: bool = True) -> None:
    """A patch is fitted to one deployed model: its header holds that model's SHA-256. Attaching it to other
    weights (even of the same architecture) is refused (`strict`), or warned about."""
    expected = meta.get("deployed_weights_sha256")
    if not expected:
        return  # a patch from before the hash was stored: nothing to compare
    found = state_dict_hash(net)
    if found == expected:
        return
    message = (f"{path}: the patch was fitted to a deployed model with weights sha256 {expected[:12]}…, "
               f"this model's are {found[:12]}… (attach it to the model it was fitted on; strict=False or "
               "--no-strict attaches it anyway)")
    if strict:
        raise InputError(message)
    warnings.warn(message, PatchMismatchWarning, stacklevel=3)


def attach(net: nn.Module, path: str | os.PathLike, strict: bool = True) -> PatchedSegmentor:
    """Attach a saved patch (perturbers + sites) to the unchanged deployed model it was fitted on.

    The deployed weights' hash stored in the patch must match `net`'s: a mismatch is an InputError,
    or with `strict=False` a `PatchMismatchWarning`."""
    tensors = load_tensors(path)
    header = read_patch_header(path)
    sites, meta = header["sites"], header.get("meta", {})
    check_fits(net, meta, path, strict)
    specs = header.get("perturbers")
    if specs is None:  # patches written before specs were stored: U-shaped, width from the config
        width = int(meta.get("apple", {}).get("width", 32))
        specs = {s: {"kind": "unet", "channels": tensors[f"{_key(s)}.out.weight"].shape[0], "width": width}
                 for s in sites}
    for s in sites:
        find_module(net, s)  # a clear error if the model lacks a site
    patched = PatchedSegmentor(net, {s: build_perturber(specs[s]) for s in sites})
    try:
        patched.perturbers.load_state_dict(tensors)
    except RuntimeError as exc:
        patched.remove()
        raise InputError(f"{path}: patch weights do not fit ({str(exc).splitlines()[0]})") from None
    patched.meta = meta
    patched.groups = header.get("groups", meta.get("groups"))
    return patched.eval()
