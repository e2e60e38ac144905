"""A small registry of segmentors: every model is one name (and its arguments) away.

A model folder holds ``model.safetensors`` (weights) and ``model.yaml`` (architecture name,
arguments, output head, default latent site), so a deployed model loads by folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from applefair.errors import InputError
from applefair.io import load_tensors, save_tensors, write_yaml


@dataclass
class ModelSpec:
    """What is needed to rebuild a segmentor: its registry name and constructor arguments."""

    name: str
    args: dict = field(default_factory=dict)
    head: str = "sigmoid"  # sigmoid: binary, one output channel
    site: str = ""  # default latent site (filled by the builder)


_BUILDERS: dict[str, Callable[..., tuple[nn.Module, str]]] = {}
_TINY: dict[str, dict] = {}


def register(name: str, tiny: dict | None = None):
    def deco(fn):
        _BUILDERS[name] = fn
        _TINY[name] = dict(tiny or {})
        return fn
    return deco


@register("unet", tiny={"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1})
def _unet(in_channels: int = 1, out_channels: int = 1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
          num_res_units: int = 2, dropout: float = 0.0) -> tuple[nn.Module, str]:
    from monai.networks.nets import UNet

    from applefair.models.sites import unet_bottleneck_site

    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
               strides=tuple(strides), num_res_units=num_res_units, dropout=dropout, norm="batch")
    return net, unet_bottleneck_site(net)


def segment(net: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of `net` for a batch dict (image, mask, index, ...): the one call site every
    trainer and evaluator uses, so prompt-based models can derive their prompts here."""
    return net(batch["image"])


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def create_segmentor(name: str, tiny: bool = False, **kwargs) -> tuple[nn.Module, ModelSpec]:
    """Build segmentor `name`; returns (network, spec). `tiny` selects a CPU-test size."""
    if name not in _BUILDERS:
        raise InputError(f"model '{name}' is not known (expected one of: {', '.join(list_models())})")
    args = {**(_TINY[name] if tiny else {}), **kwargs}
    try:
        net, site = _BUILDERS[name](**args)
    except TypeError as exc:
        raise InputError(f"model '{name}': bad arguments {args} ({exc})") from None
    return net, ModelSpec(name=name, args=args, site=site)


def save_model_dir(out: str | os.PathLike, net: nn.Module, spec: ModelSpec) -> None:
    out = Path(out)
    save_tensors(out / "model.safetensors", net.state_dict(), metadata={"applefair_model": spec.name})
    write_yaml(out / "model.yaml", asdict(spec))


def load_model_dir(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec]:
    """Load a model folder (model.yaml + model.safetensors)."""
    path = Path(path)
    meta = path / "model.yaml"
    if not meta.is_file():
        raise InputError(f"{path}: not a model folder (expected model.yaml and model.safetensors)")
    try:
        d = yaml.safe_load(meta.read_text())
        spec = ModelSpec(**d)
    except (yaml.YAMLError, TypeError) as exc:
        raise InputError(f"{meta}: invalid model description ({exc})") from None
    net, built = create_segmentor(spec.name, **spec.args)
    spec.site = spec.site or built.site
    state = load_tensors(path / "model.safetensors")
    missing, unexpected = _compare_keys(net, state)
    if missing or unexpected:
        raise InputError(f"{path / 'model.safetensors'}: weights do not fit architecture '{spec.name}' "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                         f"{(missing + unexpected)[0]})")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise InputError(f"{path / 'model.safetensors'}: weights do not fit architecture "
                         f"'{spec.name}' ({first})") from None
    return net, spec


def _compare_keys(net: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = set(net.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)
