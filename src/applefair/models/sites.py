"""Latent sites: dotted module paths whose output the perturber replaces."""

from __future__ import annotations

import difflib

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
