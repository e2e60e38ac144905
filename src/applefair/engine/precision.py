"""Mixed precision: an autocast dtype per device, and the gradient scaler fp16 needs.

One list of precisions for every trainer; APPLE's game allows a subset (no fp16: its loss scaling
would have to be shared by two optimisers playing against each other).

    amp = Precision.resolve(precision, dev)      # "auto" -> bf16/fp16 on CUDA, fp32 on CPU
    with amp.autocast():
        loss = ...
    amp.backward_step(loss, opt)                 # GradScaler only for fp16
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from applefair.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GAME_PRECISIONS = ("auto", "fp32", "bf16")  # APPLE's adversarial game: no fp16


def supports_bf16(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev.type == "cpu"


@dataclass
class Precision:
    """An autocast dtype (None: fp32) and, for fp16, a gradient scaler."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, precision: str, dev: torch.device) -> Precision:
        """'auto': bf16 on GPUs that have it, else fp16 on GPUs; fp32 on CPU (CPU autocast is
        only faster with AMX/AVX512-BF16, so it is opt-in with 'bf16')."""
        if precision not in PRECISIONS:
            raise InputError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
        if precision == "auto":
            precision = ("bf16" if supports_bf16(dev) else "fp16") if dev.type == "cuda" else "fp32"
        if precision == "fp32":
            return cls(dev)
        if precision == "bf16":
            if not supports_bf16(dev):
                raise InputError(f"precision 'bf16': not supported on device {dev} (use fp16 or fp32)")
            return cls(dev, torch.bfloat16)
        if dev.type != "cuda":
            raise InputError(f"precision 'fp16': only on CUDA devices, not {dev} (use bf16 or fp32)")
        return cls(dev, torch.float16, torch.amp.GradScaler("cuda"))

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to this dtype (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      clip_norm: float | None = None, params: Iterator[nn.Parameter] | None = None) -> None:
        """loss.backward() and optimizer.step(), through the GradScaler when fp16 needs one."""
        if self.scaler is None:
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(list(params or _opt_params(optimizer)), clip_norm)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if clip_norm:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(list(params or _opt_params(optimizer)), clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()


def _opt_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def game_precision(name: str, dev: torch.device) -> Precision:
    """APPLE's rule: bf16 autocast on GPUs that have it ('auto'), else fp32; never fp16."""
    if name not in GAME_PRECISIONS:
        raise InputError(f"precision '{name}': expected one of {', '.join(GAME_PRECISIONS)}")
    if name == "auto":
        name = "bf16" if dev.type == "cuda" and supports_bf16(dev) else "fp32"
    return Precision.resolve(name, dev)
