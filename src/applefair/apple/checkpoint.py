"""Training state of an APPLE run as one safetensors file (no pickle), written atomically.

Everything needed to continue bit-for-bit: perturber, discriminator and best-so-far weights,
both optimisers' states, the torch and data-order RNG states, and (in the header, as JSON)
the epoch, history, selection state and config. Resuming from it gives the same final
result as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from safetensors import safe_open

from applefair.errors import InputError
from applefair.io import load_tensors, save_tensors

FORMAT = "applefair-apple-checkpoint/1"


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


def save_checkpoint(path: str | os.PathLike, *, modules: Mapping[str, torch.nn.Module],
                    states: Mapping[str, Mapping[str, torch.Tensor]],
                    optimizers: Mapping[str, torch.optim.Optimizer], generator: torch.Generator,
                    meta: Mapping) -> None:
    """modules: live networks; states: extra state dicts (e.g. the best epoch's perturbers)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        tensors.update({f"module.{name}.{k}": v for k, v in mod.state_dict().items()})
    for name, sd in states.items():
        tensors.update({f"state.{name}.{k}": v for k, v in sd.items()})
    opt_plain = {name: _flatten_optimizer(f"opt.{name}", opt, tensors) for name, opt in optimizers.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = generator.get_state()
    header = {"format": FORMAT, "meta": json.dumps(meta, default=str), "optimizers": json.dumps(opt_plain)}
    save_tensors(path, tensors, metadata=header)


def load_checkpoint(path: str | os.PathLike, *, modules: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], generator: torch.Generator
                    ) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Restore modules, optimisers and RNG states in place; returns (meta, extra states)."""
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise InputError(f"{path}: not an APPLE checkpoint (expected format '{FORMAT}' in its header)")
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
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.data"])
    states: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("state."):
            name, key = k[len("state."):].split(".", 1)
            states.setdefault(name, {})[key] = v
    return json.loads(header["meta"]), states


def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The last completed epoch recorded in a checkpoint (None if there is none)."""
    if not os.path.isfile(path):
        return None
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return int(json.loads(header.get("meta", "{}")).get("epoch", 0))
