"""What `applefair models list` shows of each model: parameter count and latent shape.

Both come from building the model on the `meta` device (shapes without memory) and running it
only up to its default site (shapes without arithmetic), so a 1024-px ViT-B costs a fraction of a
second. What remains costly is importing the libraries that define the models (MONAI alone takes
several CPU seconds), so the descriptions are cached in one JSON file per user
(`$APPLEFAIR_CACHE_DIR`, else `$XDG_CACHE_HOME/applefair`, else `~/.cache/applefair`), keyed by a
fingerprint of everything they depend on: the model table, the builders' source files and the
versions of applefair and of the model libraries. Any change recomputes them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from importlib import metadata
from pathlib import Path

import torch

from applefair.models.registry import builder, create_segmentor, list_models, model_info

DEFAULT_SIZE = 256  # input side (px) used to describe a model that has no input size of its own
LIBRARIES = ("torch", "monai", "segmentation-models-pytorch", "segment-anything", "timm")


def describe_model(name: str, tiny: bool = False, size: int | None = None, **kwargs) -> dict:
    """Parameter count, default site and its latent shape (C, H, W; 3-D: C, D, H, W) for one image
    of side `size`.

    `size` defaults to the model's own input size (SAM's `img_size`), the preset's size, or
    DEFAULT_SIZE (tiny: 64 px). A model that cannot be built or run on `meta` (a constructor that
    computes on tensors, as timm's RegNet widths) is built and run on the CPU instead (`traced_on`).
    """
    try:
        return _trace(name, tiny, size, "meta", kwargs)
    except (NotImplementedError, RuntimeError):
        return _trace(name, tiny, size, "cpu", kwargs)


def _trace(name: str, tiny: bool, size: int | None, device: str, kwargs: dict) -> dict:
    from applefair.models.sites import site_shape

    with torch.device(device):
        net, spec = create_segmentor(name, tiny=tiny, **kwargs)
    net.to(device)  # tensors made by legacy constructors (SAM's pixel statistics) ignore the device context
    preset_size = None if tiny else model_info(name).get("size")
    size = int(size or getattr(net, "img_size", None) or preset_size or (64 if tiny else DEFAULT_SIZE))
    example = torch.zeros(1, spec.in_channels, *[size] * spec.spatial_dims, device=device)
    shape = site_shape(net, spec.site, example)
    return {"name": name, "builder": spec.name, "params": sum(t.numel() for t in net.parameters()),
            "size": size, "site": spec.site, "latent_shape": tuple(shape[1:]), "traced_on": device}


def describe_or_why(name: str) -> dict:
    """`describe_model(name)`, or {"name", "error"} for a model that needs arguments to exist (an
    imported nnU-Net, MONAI bundle or user module: those are described by their model folder)."""
    from applefair.errors import InputError

    try:
        return describe_model(name)
    except InputError as exc:
        return {"name": name, "error": str(exc)}


def cache_file() -> Path:
    env = os.environ.get("APPLEFAIR_CACHE_DIR")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "applefair"
    return root / "zoo.json"


def fingerprint(names: list[str]) -> str:
    """A hash of what the descriptions of `names` depend on (cheap: no model library is imported)."""
    from applefair._version import __version__

    h = hashlib.sha256(__version__.encode())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none;".encode())
    sources = {Path(__file__).with_name(f) for f in ("registry.py", "sites.py", "describe.py")}
    for name in names:
        h.update(json.dumps(model_info(name), sort_keys=True, default=str).encode())
        src = inspect.getsourcefile(builder(name))
        if src:
            sources.add(Path(src))
    for src in sorted(sources):
        h.update(src.read_bytes() if src.is_file() else str(src).encode())
    return h.hexdigest()


def describe_zoo(cache: bool = True) -> dict[str, dict]:
    """`describe_model` of every model and preset, from the cache when its fingerprint matches."""
    names = list_models()
    key = fingerprint(names)
    path = cache_file()
    if cache:
        try:
            stored = json.loads(path.read_text())
            if stored.get("fingerprint") == key:
                return {n: {**d, **({"latent_shape": tuple(d["latent_shape"])} if "latent_shape" in d else {})}
                        for n, d in stored["models"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    described = {n: describe_or_why(n) for n in names}
    if cache:
        try:
            from applefair.engine.io import write_json

            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"fingerprint": key, "models": described})
        except OSError:  # a read-only home: describe again next time
            pass
    return described
