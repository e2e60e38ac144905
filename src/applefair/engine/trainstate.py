"""A trainer's full state as one safetensors file (no pickle), written atomically.

Shared by the APPLE trainer (`applefair.apple.checkpoint`) and the ERM trainer
(`applefair.training.erm`): networks, extra state dicts (e.g. the best epoch's weights),
optimisers, learning-rate schedulers, and every random stream a trainer draws from (torch,
CUDA, the data-order generator, NumPy and Python globals, and private NumPy streams such as
MONAI transforms'). Tensors go in the body; everything else is JSON in the header, so that
restoring the file continues a run bit-for-bit.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from applefair.engine.io import load_tensors, save_tensors
from applefair.errors import InputError


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    sd = opt.state_dict()
    plain: dict = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        plain["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v
                plain["state"][str(pid)][k] = "__tensor__"
            else:
                plain["state"][str(pid)][k] = v
    return plain


def _unflatten_optimizer(prefix: str, plain: dict, tensors: Mapping[str, torch.Tensor]) -> dict:
    state = {}
    for pid, st in plain["state"].items():
        state[int(pid)] = {k: (tensors[f"{prefix}.{pid}.{k}"] if v == "__tensor__" else v) for k, v in st.items()}
    return {"state": state, "param_groups": plain["param_groups"]}


def numpy_streams(obj: object) -> list[np.random.RandomState]:
    """Every private NumPy RandomState reachable from `obj` (e.g. a MONAI Compose), in a fixed order."""
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def walk(o: object, depth: int) -> None:
        if depth > 6 or id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, np.random.RandomState):
            found.append(o)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
        elif hasattr(o, "__dict__") and not isinstance(o, (type, torch.Tensor, np.ndarray)):
            for k in sorted(vars(o)):
                walk(vars(o)[k], depth + 1)

    if obj is not None:
        walk(obj, 0)
    return found


def _np_state(prefix: str, rs: np.random.RandomState, tensors: dict) -> list:
    name, keys, pos, has_gauss, cached = rs.get_state(legacy=True)
    tensors[prefix] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    return [name, int(pos), int(has_gauss), float(cached)]


def _set_np_state(prefix: str, rs: np.random.RandomState, plain: list, tensors: Mapping[str, torch.Tensor]) -> None:
    keys = tensors[prefix].numpy().view(np.uint32)
    rs.set_state((plain[0], keys, plain[1], plain[2], plain[3]))


def save_state(path: str | os.PathLike, *, fmt: str, modules: Mapping[str, torch.nn.Module],
               states: Mapping[str, Mapping[str, torch.Tensor]], optimizers: Mapping[str, torch.optim.Optimizer],
               generator: torch.Generator, meta: Mapping, schedulers: Mapping[str, object] | None = None,
               streams: Sequence[np.random.RandomState] = ()) -> None:
    """modules: live networks; states: extra state dicts; streams: private NumPy RNGs (see `numpy_streams`)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        tensors.update({f"module.{name}.{k}": v for k, v in mod.state_dict().items()})
    for name, sd in states.items():
        tensors.update({f"state.{name}.{k}": v for k, v in sd.items()})
    opt_plain = {name: _flatten_optimizer(f"opt.{name}", opt, tensors) for name, opt in optimizers.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's own GPU only (one per rank)
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    rngs = {"numpy": _np_state("rng.numpy", np.random.mtrand._rand, tensors),
            "python": random.getstate(),
            "streams": [_np_state(f"rng.stream.{i}", rs, tensors) for i, rs in enumerate(streams)]}
    header = {"format": fmt, "meta": json.dumps(meta, default=str), "optimizers": json.dumps(opt_plain),
              "schedulers": json.dumps({k: s.state_dict() for k, s in (schedulers or {}).items()}),
              "rng": json.dumps(rngs)}
    save_tensors(path, tensors, metadata=header)


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The JSON header of a state file (InputError if it is not a readable safetensors file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None


def load_state(path: str | os.PathLike, *, fmt: str, what: str, modules: Mapping[str, torch.nn.Module],
               optimizers: Mapping[str, torch.optim.Optimizer], generator: torch.Generator,
               schedulers: Mapping[str, object] | None = None, streams: Sequence[np.random.RandomState] = ()
               ) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Restore everything `save_state` wrote, in place; returns (meta, extra states).

    `what` names the kind of checkpoint in the error of a file with another format.
    """
    tensors = load_tensors(path)
    header = read_header(path)
    if header.get("format") != fmt:
        raise InputError(f"{path}: not {what} (expected format '{fmt}' in its header)")
    for name, mod in modules.items():
        pre = f"module.{name}."
        try:
            mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
        except RuntimeError as exc:
            raise InputError(f"{path}: checkpoint does not fit this run's '{name}' "
                             f"({str(exc).splitlines()[0]}); was it made with another config?") from None
    opt_plain = json.loads(header["optimizers"])
    for name, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(f"opt.{name}", opt_plain[name], tensors))
    sched_plain = json.loads(header.get("schedulers", "{}"))
    for name, sched in (schedulers or {}).items():
        if name in sched_plain:  # e.g. no fp16 gradient scaler in a checkpoint made on the CPU: it starts fresh
            sched.load_state_dict(sched_plain[name])
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    rngs = json.loads(header.get("rng", "{}"))
    if "numpy" in rngs:
        _set_np_state("rng.numpy", np.random.mtrand._rand, rngs["numpy"], tensors)
    if "python" in rngs:
        version, internal, gauss = rngs["python"]
        random.setstate((version, tuple(internal), gauss))
    saved = rngs.get("streams", [])
    if len(saved) != len(streams) and (saved or streams):
        raise InputError(f"{path}: checkpoint has {len(saved)} augmentation random stream(s), this run "
                         f"{len(streams)}; was it made with another config?")
    for i, (rs, plain) in enumerate(zip(streams, saved, strict=True)):
        _set_np_state(f"rng.stream.{i}", rs, plain, tensors)
    states: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("state."):
            name, key = k[len("state."):].split(".", 1)
            states.setdefault(name, {})[key] = v
    return json.loads(header["meta"]), states


def state_epoch(path: str | os.PathLike) -> int | None:
    """The last completed epoch recorded in a state file (None if there is none)."""
    if not os.path.isfile(path):
        return None
    return int(json.loads(read_header(path).get("meta", "{}")).get("epoch", 0))
