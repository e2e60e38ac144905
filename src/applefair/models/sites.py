"""Latent sites: dotted module paths whose output the perturber replaces."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from applefair.errors import InputError


def find_module(model: nn.Module, site: str) -> nn.Module:
    """The submodule at dotted path `site`; an unknown path lists the nearest valid ones."""
    modules = dict(model.named_modules())
    if site in modules and site != "":
        return modules[site]
    near = difflib.get_close_matches(site, [n for n in modules if n], n=5, cutoff=0.4)
    hint = f"; nearest valid sites: {', '.join(near)}" if near else ""
    raise InputError(f"site '{site}' is not a module of {type(model).__name__}{hint}")


def site_modules(model: nn.Module, sites: Sequence[str]) -> dict[str, nn.Module]:
    """{site: module} of a segmentor, or of the segmentor a wrapper holds as `.net` (a patched model,
    an input-perturbed model): the modules whose outputs the decoder receives, to capture or probe."""
    target = model.net if isinstance(getattr(model, "net", None), nn.Module) else model
    return {s: find_module(target, s) for s in sites}


def unet_bottleneck_site(net: nn.Module) -> str:
    """The bottleneck of a MONAI UNet: the innermost `submodule` of its nested SkipConnections."""
    from monai.networks.layers.simplelayers import SkipConnection

    path, module = "model", net.model
    while True:
        skip = next((c for c in module.children() if isinstance(c, SkipConnection)), None)
        if skip is None:
            return path
        idx = [i for i, c in enumerate(module.children()) if c is skip][0]
        path, module = f"{path}.{idx}.submodule", skip.submodule


def unet_skip_sites(net: nn.Module) -> list[str]:
    """The encoder outputs that feed each skip connection of a MONAI UNet (outermost first)."""
    from monai.networks.layers.simplelayers import SkipConnection

    sites, path, module = [], "model", net.model
    while True:
        children = list(module.children())
        skip = next((c for c in children if isinstance(c, SkipConnection)), None)
        if skip is None:
            return sites
        sites.append(f"{path}.0")  # the down block whose output is both skipped and fed deeper
        idx = children.index(skip)
        path, module = f"{path}.{idx}.submodule", skip.submodule


def attention_unet_sites(net: nn.Module) -> tuple[str, list[str]]:
    """(bottleneck, skips) of a MONAI AttentionUnet: the ConvBlock feeding each AttentionLayer
    is a skip level; the innermost AttentionLayer's `submodule` is the bottleneck."""
    from monai.networks.nets.attentionunet import AttentionLayer

    skips, path, module = ["model.0"], "model.1", net.model[1]
    while isinstance(module, AttentionLayer):
        sub = module.submodule
        if isinstance(sub, nn.Sequential) and len(sub) == 2 and isinstance(sub[1], AttentionLayer):
            skips.append(f"{path}.submodule.0")
            path, module = f"{path}.submodule.1", sub[1]
        else:
            return f"{path}.submodule", skips
    raise ValueError(f"unexpected AttentionUnet layout at '{path}'")


def feature_sites(net: nn.Module, prefix: str, encoder: nn.Module, example: torch.Tensor) -> list[str]:
    """Sites of an encoder that returns a list of feature maps (segmentation_models_pytorch):
    for each feature (shallow to deep, the input itself excluded), the module that last returned
    that very tensor object, found by running the encoder once."""
    produced: dict[int, str] = {}
    handles = []
    for name, module in encoder.named_modules():
        if name:
            def hook(_m, _i, out, name=name):
                if torch.is_tensor(out):  # the last module to return the object: the outer container,
                    produced[id(out)] = name  # or the in-place activation after a norm layer
            handles.append(module.register_forward_hook(hook))
    try:
        was = encoder.training
        encoder.eval()
        with torch.no_grad():
            features = encoder(example)
        encoder.train(was)
    finally:
        for h in handles:
            h.remove()
    sites = [f"{prefix}.{produced[id(f)]}" for f in features[1:] if id(f) in produced]
    if not sites:
        raise ValueError(f"no module of {type(encoder).__name__} outputs its features")
    return sites


class _ReachedSite(Exception):
    """Raised by a hook to stop a forward pass once the site has been reached."""


def site_shape(net: nn.Module, site: str, example: torch.Tensor) -> torch.Size:
    """The output shape of `site` for `example`, running the network only up to that module.

    On the `meta` device (network and example) this computes shapes only: it is how a 1024-px
    ViT's latent shape is known without running it."""
    from applefair.models.forward import segment

    shape: list[torch.Size] = []

    def stop(_m, _i, out):
        shape.append(out.shape)
        raise _ReachedSite

    handle = find_module(net, site).register_forward_hook(stop)
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            segment(net, {"image": example})
    except _ReachedSite:
        pass
    finally:
        handle.remove()
        net.train(was)
    if not shape:
        raise InputError(f"site '{site}' is not run by the forward pass of {type(net).__name__}")
    return shape[0]


@dataclass
class SiteInfo:
    """One candidate site: its path, module type, output shape and calls per forward."""

    name: str
    module: str
    shape: tuple[int, ...]
    calls: int = 1
    role: str = ""  # "default", "skip" or ""


def list_sites(net: nn.Module, example: torch.Tensor, default: str = "", skips: Sequence[str] = ()
               ) -> list[SiteInfo]:
    """Every module whose output is a tensor, with the shape it has for `example` (B, C, H, W).

    A module called more than once per forward (a shared activation) is listed with its call
    count: a hook there would perturb every call, so it is a poor site.
    """
    from applefair.models.forward import segment

    seen: dict[str, SiteInfo] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(m, _i, out, name=name):
            if not torch.is_tensor(out):
                return
            if name in seen:
                seen[name].calls += 1
            else:
                seen[name] = SiteInfo(name, type(m).__name__, tuple(out.shape))
        handles.append(module.register_forward_hook(hook))
    try:
        was = net.training
        net.eval()
        with torch.no_grad():
            segment(net, {"image": example})
        net.train(was)
    finally:
        for h in handles:
            h.remove()
    order = {n: i for i, (n, _) in enumerate(net.named_modules())}
    infos = sorted(seen.values(), key=lambda s: order[s.name])
    for s in infos:
        s.role = "default" if s.name == default else ("skip" if s.name in skips else "")
    return infos


def deepest_site(net: nn.Module, example: torch.Tensor) -> str:
    """A guess at the bottleneck of an unknown network: of the modules called once per forward whose
    output has the input's rank, the last to finish with the smallest spatial size (the outermost
    module around the deepest features). A guess, printed as one; `--site` overrides it."""
    calls: dict[str, int] = {}
    done: list[tuple[str, int]] = []
    handles = []
    for name, module in net.named_modules():
        if name:
            def hook(_m, _i, out, name=name):
                calls[name] = calls.get(name, 0) + 1
                if torch.is_tensor(out) and out.ndim == example.ndim:
                    done.append((name, int(torch.tensor(out.shape[2:]).prod())))
            handles.append(module.register_forward_hook(hook))
    try:
        was = net.training
        net.eval()
        with torch.no_grad():
            net(example)
        net.train(was)
    finally:
        for h in handles:
            h.remove()
    once = [(n, s) for n, s in done if calls[n] == 1]
    if not once:
        raise InputError(f"{type(net).__name__}: no submodule outputs a {example.ndim}-D feature map once per "
                         f"forward; name the latent site with --site")
    smallest = min(s for _, s in once)
    return [n for n, s in once if s == smallest][-1]
