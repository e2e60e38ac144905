"""Export of the mitigated model (frozen segmentor + fairness patch) as one graph.

TorchScript (torch.jit.trace) and ONNX (torch.onnx.export) both trace through the forward
hooks, so the exported graph computes D_s(E_s(x) + G_p(E_s(x))) with no applefair code needed
at inference. `check_export` compares each export with the eager model on an example batch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from applefair.engine.io import atomic_path


class _ImageOnly(nn.Module):
    """A plain image -> logits module (tracing wants a single tensor input)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace `model` (eval mode) on `example` and save the TorchScript archive atomically."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the check below is what counts
        traced = torch.jit.trace(_ImageOnly(model), example, check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
    return Path(path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int = 17) -> Path:
    """Export `model` (eval mode) to ONNX with a dynamic batch axis, atomically."""
    model.eval()
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ImageOnly(model), (example,), str(tmp), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return Path(path)


def check_export(model: nn.Module, example: torch.Tensor, torchscript: str | os.PathLike | None = None,
                 onnx_path: str | os.PathLike | None = None) -> dict[str, float]:
    """Max absolute difference between the eager output and each export's output on `example`."""
    model.eval()
    with torch.no_grad():
        eager = model(example).float()
        out: dict[str, float] = {}
        if torchscript is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                ts = torch.jit.load(str(torchscript))
            out["torchscript_max_abs_diff"] = float((ts(example) - eager).abs().max())
    if onnx_path is not None:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (res,) = sess.run(None, {"image": example.numpy().astype(np.float32)})
        out["onnx_max_abs_diff"] = float(np.abs(res - eager.numpy()).max())
    return out
