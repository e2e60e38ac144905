"""Devices: the one place a device name becomes a device, and per-device settings (layout, loaders).

Each helper asks the device what it supports and falls back to the plain path when it does not,
so trainers call them unconditionally and CPU runs stay bit-for-bit what they were:

    dev = device.resolve_device("auto")          # cuda when there is one; under torchrun cuda:LOCAL_RANK
    net = device.channels_last(net, dev)
    loader = DataLoader(ds, **device.loader_settings(dev))

Mixed precision lives in `applefair.engine.precision`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from applefair.errors import InputError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The one place a device name becomes a device.

    'auto' is the first CUDA device when there is one, else the CPU; asking for an absent GPU
    is bad input. Under torchrun a bare 'cuda' (or 'auto' on a GPU machine) becomes this
    process's own GPU, cuda:LOCAL_RANK, so that N processes do not all share GPU 0.
    """
    from applefair.engine.distributed import init

    init()  # under torchrun: join the process group first (a no-op otherwise)
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is visible on this machine (use cpu or auto)")
        if dev.index is None and "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def module_device(module: nn.Module) -> torch.device:
    """Where a module lives (its first parameter or buffer); loops move their batches there."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def channels_last(obj: nn.Module | torch.Tensor, dev: torch.device) -> nn.Module | torch.Tensor:
    """NHWC memory layout on CUDA (faster convolutions with tensor cores); unchanged elsewhere.

    On CPU the default layout is kept: oneDNN gains little there and some MONAI blocks
    re-layout tensors anyway. 5-D inputs use channels_last_3d.
    """
    if dev.type != "cuda":
        return obj
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=torch.channels_last)
    if obj.dim() == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    if obj.dim() == 5:
        return obj.contiguous(memory_format=torch.channels_last_3d)
    return obj


def loader_settings(dev: torch.device, num_workers: int | None = None) -> dict:
    """DataLoader keyword arguments for `dev`.

    CUDA: worker processes decode while the GPU computes, and pinned memory lets copies run
    asynchronously (`to(dev, non_blocking=True)`). CPU: the cores do the training, datasets cache
    decoded arrays, so loading in the main process is the fastest (no worker copies).
    """
    if num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_workers = min(4, max(0, cores - 1)) if dev.type == "cuda" else 0
    if num_workers < 0:
        raise InputError(f"num_workers={num_workers}: expected 0 or more")
    out = {"num_workers": num_workers, "pin_memory": dev.type == "cuda"}
    if num_workers > 0:
        out["persistent_workers"] = True
    return out


def to_device(batch: dict, dev: torch.device) -> dict:
    """Move the tensors of a batch dict to `dev` (non-blocking from pinned memory)."""
    return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def tune_backends(dev: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls on CUDA (fixed input sizes make autotuning pay off)."""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def peak_cuda_memory_mb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(dev) / 2**20
