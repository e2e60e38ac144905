"""A user's own PyTorch module as an applefair segmentor: `package.module:Class` + keyword arguments
+ a weights-only state dict.

Importing the class runs the user's code (that is what the user asks for); the weights are still
read with safetensors or `torch.load(weights_only=True)`, never unpickled. The class must be
importable wherever the model folder is loaded (installed, or on PYTHONPATH).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

import torch
from torch import nn

from applefair.errors import InputError
from applefair.models.registry import ModelSpec, register
from applefair.models.sites import deepest_site, find_module


def load_class(path: str) -> type:
    """The class named `package.module:Class` (or `package.module.Class`); imports the module."""
    if not isinstance(path, str) or not path.strip():
        raise InputError(f"--model-class {path!r}: expected package.module:Class")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise InputError(f"--model-class '{path}': expected package.module:Class")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"--model-class '{path}': cannot import module '{module_name}' ({exc}); is it installed "
                         f"or on PYTHONPATH?") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise InputError(f"--model-class '{path}': module '{module_name}' has no '{attr}'")
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise InputError(f"--model-class '{path}': '{attr}' is not a torch.nn.Module subclass")
    return obj


@register("custom", summary="your own nn.Module class + weights (applefair models import module)")
def _custom(model_class: str, kwargs: dict | None = None, site: str = "", skip_sites: Sequence[str] = (),
            head: str = "sigmoid", in_channels: int = 1, spatial_dims: int = 2, example_size: int = 64,
            ) -> tuple[nn.Module, str, list[str], dict]:
    cls = load_class(model_class)
    try:
        net = cls(**dict(kwargs or {}))
    except TypeError as exc:
        raise InputError(f"--model-class '{model_class}': bad keyword arguments {dict(kwargs or {})} ({exc})") from None
    if head not in ("sigmoid", "softmax"):
        raise InputError(f"--head '{head}': expected sigmoid or softmax")
    for s in [site, *skip_sites]:
        if s:
            find_module(net, s)
    if not site:
        site = deepest_site(net, torch.rand(1, int(in_channels), *[int(example_size)] * int(spatial_dims)))
    return net, site, list(skip_sites), {"head": head, "in_channels": int(in_channels),
                                         "spatial_dims": int(spatial_dims)}


def import_module(model_class: str, weights: str | os.PathLike, out: str | os.PathLike, kwargs: dict | None = None,
                  site: str = "", skip_sites: Sequence[str] = (), head: str | None = None, in_channels: int = 1,
                  spatial_dims: int = 2, overwrite: bool = False) -> ModelSpec:
    """Build `model_class(**kwargs)`, load `weights` (safetensors, or .pt/.pth read weights-only) and
    write an applefair model folder at `out`. Without `site` the bottleneck is guessed (deepest
    feature map); without `head`, one output channel means sigmoid and several softmax."""
    from applefair.models.checkpoints import apply_state, read_checkpoint
    from applefair.models.importing import check_runs, write_model_folder
    from applefair.models.registry import create_segmentor

    args = {"model_class": model_class, "kwargs": dict(kwargs or {}), "site": site, "skip_sites": list(skip_sites),
            "head": head or "sigmoid", "in_channels": int(in_channels), "spatial_dims": int(spatial_dims)}
    net, spec = create_segmentor("custom", **args)
    spec.args["site"] = spec.site  # the guess, if it was one, is fixed from now on
    apply_state(net, f"custom {model_class}", read_checkpoint(weights), weights)
    check_runs(net, spec, weights)
    if head is None:
        with torch.no_grad():
            channels = net.eval()(torch.rand(1, int(in_channels), *[64] * int(spatial_dims))).shape[1]
        spec.head = spec.args["head"] = "softmax" if channels > 1 else "sigmoid"
    source = {"format": "module", "model_class": model_class, "weights": str(os.path.abspath(weights)),
              "site_guessed": not site}
    write_model_folder(out, net, spec, source, overwrite=overwrite)
    return spec
