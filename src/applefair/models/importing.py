"""What the importers share: reading the source's files, checking the rebuilt model runs, and
writing the model folder in one piece.

An imported model folder is an ordinary model folder (`model.safetensors` + `model.yaml`, loaded by
`load_model_dir`) plus `source.yaml` (where it came from) and `source/` (copies of the files it was
built from, e.g. nnU-Net's plans.json and dataset.json, a bundle's configs), kept for the record:
`load_model_dir` needs only model.yaml and model.safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from torch import nn

from applefair.engine.io import staged_dir, write_yaml
from applefair.engine.runfolder import MODEL_SOURCE
from applefair.errors import InputError
from applefair.models.registry import ModelSpec, save_model_dir


def read_config(path: str | os.PathLike, what: str) -> dict:
    """A JSON or YAML file holding a mapping; a missing or unreadable file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found (expected the {what})")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: not a readable {what} ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top of the {what}, found {type(data).__name__}")
    return data


def example_input(spec: ModelSpec, size: int = 64) -> torch.Tensor:
    """A random batch of one image of the shape the model takes: (1, C, size, size[, size])."""
    return torch.rand(1, spec.in_channels, *([size] * spec.spatial_dims))


def check_runs(net: nn.Module, spec: ModelSpec, source: str | os.PathLike, size: int = 64) -> None:
    """Run one example image through the imported model: it must give logits of the image's size,
    one channel per output (a sigmoid head) or per class (softmax, at least two)."""
    from applefair.models.forward import segment

    x = example_input(spec, size)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            y = segment(net, {"image": x})
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's network failed on a valid input: say so in one line
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise InputError(f"{source}: the imported model fails on a {'x'.join(map(str, x.shape))} image "
                         f"({type(exc).__name__}: {msg})") from None
    finally:
        net.train(was)
    if not torch.is_tensor(y) or y.shape[0] != 1 or tuple(y.shape[2:]) != tuple(x.shape[2:]):
        got = list(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise InputError(f"{source}: the imported model maps a {list(x.shape)} image to {got}; expected logits "
                         f"(1, K, {', '.join(map(str, x.shape[2:]))}) at the image's size")
    if spec.head == "softmax" and y.shape[1] < 2:
        raise InputError(f"{source}: head 'softmax' needs at least two output channels, the model has {y.shape[1]}")


def write_model_folder(out: str | os.PathLike, net: nn.Module, spec: ModelSpec, source: Mapping,
                       copies: Mapping[str, str | os.PathLike] | None = None, overwrite: bool = False) -> Path:
    """Write the model folder at `out` in one piece (staged, moved into place at the end).

    `source` goes to source.yaml; `copies` maps a name under source/ to a file to copy there."""
    out = Path(out)
    with staged_dir(out, overwrite=overwrite) as stage:
        save_model_dir(stage, net.to("cpu"), spec)
        write_yaml(stage / MODEL_SOURCE, dict(source))
        for name, path in (copies or {}).items():
            (stage / "source" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, stage / "source" / name)
    return out
