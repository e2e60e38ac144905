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

from applefair.engine.io import load_tensors, save_tensors, write_yaml
from applefair.engine.runfolder import MODEL_CONFIG, MODEL_WEIGHTS
from applefair.errors import InputError
from applefair.models.checkpoints import apply_state, unique_state


@dataclass
class ModelSpec:
    """What is needed to rebuild a segmentor: its registry name and constructor arguments."""

    name: str
    args: dict = field(default_factory=dict)
    head: str = "sigmoid"  # sigmoid: binary, one output channel
    site: str = ""  # default latent site (filled by the builder)
    skip_sites: list[str] = field(default_factory=list)  # one site per skip level, shallow to deep
    in_channels: int = 1  # input channels the network takes (an example input for `models sites` needs it)
    spatial_dims: int = 2  # 2: (B, C, H, W) images; 3: (B, C, D, H, W) volumes


_BUILDERS: dict[str, Callable[..., tuple]] = {}
_TINY: dict[str, dict] = {}
_SUMMARY: dict[str, str] = {}


def register(name: str, tiny: dict | None = None, summary: str = ""):
    """Add a builder `fn(**args) -> (net, default_site[, skip_sites[, spec_fields]])` under `name`;
    `tiny` holds the arguments of its CPU-test size. `spec_fields` (a dict) sets other ModelSpec
    fields that follow from the arguments (head, in_channels, spatial_dims)."""
    def deco(fn):
        _BUILDERS[name] = fn
        _TINY[name] = dict(tiny or {})
        _SUMMARY[name] = summary or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def model_info(name: str) -> dict:
    """Summary line and tiny arguments of a registered model."""
    if name not in _BUILDERS:
        raise InputError(f"model '{name}' is not known (expected one of: {', '.join(list_models())})")
    return {"name": name, "summary": _SUMMARY.get(name, ""), "tiny": dict(_TINY[name])}


def create_segmentor(name: str, tiny: bool = False, seed: int | None = None, **kwargs
                     ) -> tuple[nn.Module, ModelSpec]:
    """Build segmentor `name`; returns (network, spec). `tiny` selects a CPU-test size.

    With `seed`, the initial weights depend on the seed only (not on the global random state,
    which is left as it was), so the same seed trains the same model.
    """
    if name not in _BUILDERS:
        raise InputError(f"model '{name}' is not known (expected one of: {', '.join(list_models())})")
    args = {**(_TINY[name] if tiny else {}), **kwargs}
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            built = _BUILDERS[name](**args)
    except TypeError as exc:
        raise InputError(f"model '{name}': bad arguments {args} ({exc})") from None
    net, site, skips, fields = (*built, [], {})[:4] if len(built) == 2 else (*built, {})[:4]
    return net, ModelSpec(name=name, args=args, site=site, skip_sites=list(skips), **fields)


def save_model_dir(out: str | os.PathLike, net: nn.Module, spec: ModelSpec) -> None:
    """Write model.safetensors (each tensor once) and model.yaml (name, arguments, sites)."""
    out = Path(out)
    save_tensors(out / MODEL_WEIGHTS, unique_state(net), metadata={"applefair_model": spec.name})
    write_yaml(out / MODEL_CONFIG, asdict(spec))


def load_model_dir(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec]:
    """Load a model folder (model.yaml + model.safetensors)."""
    path = Path(path)
    meta = path / MODEL_CONFIG
    if not meta.is_file():
        raise InputError(f"{path}: not a model folder (expected model.yaml and model.safetensors)")
    try:
        d = yaml.safe_load(meta.read_text())
        spec = ModelSpec(**d)
    except (yaml.YAMLError, TypeError) as exc:
        raise InputError(f"{meta}: invalid model description ({exc})") from None
    net, built = create_segmentor(spec.name, **spec.args)
    for key in ("head", "in_channels", "spatial_dims"):  # not in model.yaml: what the builder says
        if key not in d:
            setattr(spec, key, getattr(built, key))
    spec.site = spec.site or built.site
    spec.skip_sites = spec.skip_sites or built.skip_sites
    apply_state(net, spec.name, load_tensors(path / MODEL_WEIGHTS), path / MODEL_WEIGHTS)
    return net, spec


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a model folder (holds model.yaml)."""
    return (Path(path) / MODEL_CONFIG).is_file()
