"""A small registry of segmentors: every model is one name (and its arguments) away.

A model folder holds ``model.safetensors`` (weights) and ``model.yaml`` (architecture name,
arguments, output head, default latent site), so a deployed model loads by folder.

Presets (`preset()`) name a set of constructor arguments of a registered builder, e.g.
`sam_vit_b_1024` = `sam` with `variant=vit_b, img_size=1024`. They are a table of arguments, not
more builders: one builder per architecture keeps one code path to test, and a preset is accepted
wherever a model name is (`create_segmentor`, `--model`, compare grids, model.yaml). A model
folder stores the builder's name and the full, resolved arguments (plus the preset's name for the
record), so a folder rebuilds the same network even if a preset is later retuned.
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
    preset: str = ""  # the preset it was built from, if any (the record; `name` and `args` rebuild it)


@dataclass(frozen=True)
class Preset:
    """A named set of constructor arguments of the registered builder `model`."""

    name: str
    model: str
    args: dict
    tiny: dict  # --tiny: merged over `args` (after the builder's own tiny arguments)
    size: int | None  # the input side (px) it is meant for
    summary: str


_BUILDERS: dict[str, Callable[..., tuple]] = {}
_TINY: dict[str, dict] = {}
_SUMMARY: dict[str, str] = {}
_PRESETS: dict[str, Preset] = {}


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


def preset(name: str, model: str, args: dict, *, tiny: dict | None = None, size: int | None = None,
           summary: str = "") -> None:
    """Name `args` of builder `model` as `name`; `tiny` adds to the builder's tiny arguments (e.g.
    `img_size: None` so that a tiny SAM preset falls back to the tiny input size)."""
    if model not in _BUILDERS:
        raise ValueError(f"preset '{name}': builder '{model}' is not registered")
    if name in _BUILDERS:
        raise ValueError(f"preset '{name}' would hide the builder of the same name")
    _PRESETS[name] = Preset(name, model, dict(args), dict(tiny or {}), size, summary)


def list_models(presets: bool = True) -> list[str]:
    """Every name `create_segmentor` accepts: the builders and (unless `presets=False`) the presets."""
    return sorted([*_BUILDERS, *(_PRESETS if presets else ())])


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def _resolve(name: str, tiny: bool) -> tuple[str, dict]:
    """(builder name, default arguments) of a builder or preset name."""
    if name in _BUILDERS:
        return name, dict(_TINY[name]) if tiny else {}
    if name in _PRESETS:
        p = _PRESETS[name]
        return p.model, {**p.args, **({**_TINY[p.model], **p.tiny} if tiny else {})}
    raise InputError(f"model '{name}' is not known (expected one of: {', '.join(list_models())})")


def builder(name: str) -> Callable[..., tuple]:
    """The builder function behind a model or preset name."""
    return _BUILDERS[_resolve(name, tiny=False)[0]]


def model_info(name: str) -> dict:
    """Summary line and tiny arguments of a registered model or preset (with its builder, arguments
    and input size)."""
    base, tiny_args = _resolve(name, tiny=True)
    if name in _BUILDERS:
        return {"name": name, "summary": _SUMMARY.get(name, ""), "tiny": tiny_args}
    p = _PRESETS[name]
    return {"name": name, "summary": p.summary, "tiny": tiny_args, "preset_of": base, "args": dict(p.args),
            "size": p.size}


def create_segmentor(name: str, tiny: bool = False, seed: int | None = None, **kwargs
                     ) -> tuple[nn.Module, ModelSpec]:
    """Build segmentor `name` (a builder or a preset); returns (network, spec). `tiny` selects a
    CPU-test size; `kwargs` override the preset's and the tiny arguments.

    With `seed`, the initial weights depend on the seed only (not on the global random state,
    which is left as it was), so the same seed trains the same model.
    """
    base, defaults = _resolve(name, tiny)
    args = {**defaults, **kwargs}
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            built = _BUILDERS[base](**args)
    except TypeError as exc:
        raise InputError(f"model '{name}': bad arguments {args} ({exc})") from None
    net, site, skips, fields = (*built, [], {})[:4] if len(built) == 2 else (*built, {})[:4]
    return net, ModelSpec(name=base, args=args, site=site, skip_sites=list(skips),
                          preset=name if name in _PRESETS else "", **fields)


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
