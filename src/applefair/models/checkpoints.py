"""Loading weights into a zoo model: safetensors, or a user's .pt/.pth with pickle disabled.

`torch.load(..., weights_only=True)` only rebuilds tensors and plain containers; a file that
needs arbitrary Python objects (and could run code while loading) is refused with a message
saying how to re-save it. Common wrappers are unpacked: {"state_dict": ...}, {"model": ...},
{"model_state_dict": ...}, {"network_weights": ...} (nnU-Net), and DDP's "module." prefix.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from applefair.engine.io import load_tensors
from applefair.errors import InputError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network_weights", "net", "weights")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} state dict from a .safetensors, .pt, .pth, .bin or .ckpt file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    return _flatten(load_weights_only(path), path)


def load_weights_only(path: str | os.PathLike, allow: Sequence = ()) -> object:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, plus the data-only
    types in `allow` (classes, or (class, "pickled.name") pairs, as `torch.serialization.safe_globals`
    takes them) for this one call. Anything else is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise InputError(f"{path}: refused to load: it holds Python objects beyond tensors, and unpickling "
                         f"them could run code ({first}). Re-save only the weights, e.g. "
                         f"torch.save(model.state_dict(), 'weights.pt')") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:200]})") from None


def _flatten(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise InputError(f"{path}: holds no tensors (keys: {', '.join(map(str, list(obj)[:8]))})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def aliases(net: nn.Module) -> dict[str, str]:
    """State-dict keys that name a tensor already named by an earlier key (a module registered
    twice, as DynUNet's skip layers do) -> that earlier key."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for k, v in net.state_dict(keep_vars=True).items():
        if id(v) in first:
            out[k] = first[id(v)]
        else:
            first[id(v)] = k
    return out


def unique_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without aliased keys (safetensors stores each tensor once)."""
    dup = aliases(net)
    return {k: v for k, v in net.state_dict().items() if k not in dup}


def apply_state(net: nn.Module, name: str, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load `state` into `net` (architecture `name`) or raise an InputError saying why it does not fit."""
    if hasattr(net, "adapt_state_dict"):
        state = net.adapt_state_dict(state)
    state = dict(state)
    for k, canonical in aliases(net).items():
        if k not in state and canonical in state:
            state[k] = state[canonical]
    optional = getattr(net, "optional_key", lambda _k: False)
    own = net.state_dict()
    missing = sorted(k for k in own if k not in state and not optional(k))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        example = (missing + unexpected)[0]
        raise InputError(f"{source}: weights do not fit architecture '{name}' ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys, e.g. '{example}'); is it a checkpoint of "
                         f"another model or size?")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        k, got, want = bad[0]
        raise InputError(f"{source}: weights do not fit architecture '{name}' ({len(bad)} tensors of the wrong "
                         f"shape, e.g. '{k}' is {list(got)}, expected {list(want)})")
    net.load_state_dict(state, strict=False)


def load_checkpoint(net: nn.Module, name: str, path: str | os.PathLike) -> nn.Module:
    """Read `path` and load it into `net`; returns `net`."""
    apply_state(net, name, read_checkpoint(path), path)
    return net
