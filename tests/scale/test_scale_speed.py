"""Mixed precision, channels-last and loader settings choose the right path per device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from applefair.engine import device as speed
from applefair.engine.precision import Precision
from applefair.errors import InputError

CPU = torch.device("cpu")


def test_auto_precision_is_fp32_on_cpu_and_autocast_is_a_no_op():
    amp = Precision.resolve("auto", CPU)
    assert amp.name == "fp32" and amp.scaler is None
    lin = nn.Linear(4, 2)
    with amp.autocast():
        y = lin(torch.randn(3, 4))
    assert y.dtype == torch.float32


def test_bf16_autocast_runs_on_cpu():
    amp = Precision.resolve("bf16", CPU)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with amp.autocast():
        y = conv(torch.randn(2, 1, 8, 8))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("bad", ["fp8", "half"])
def test_unknown_precision_is_an_input_error(bad):
    with pytest.raises(InputError, match="precision"):
        Precision.resolve(bad, CPU)


def test_fp16_needs_cuda():
    with pytest.raises(InputError, match="fp16"):
        Precision.resolve("fp16", CPU)


def test_backward_step_updates_and_clips():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1)
    before = lin.weight.detach().clone()
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    loss = (lin(torch.randn(8, 4)) * 1e4).pow(2).mean()
    Precision.resolve("fp32", CPU).backward_step(loss, opt, clip_norm=0.5)
    step = (lin.weight.detach() - before).norm()
    assert 0 < float(step) <= 0.5 + 1e-5


def test_channels_last_only_on_cuda():
    x = torch.randn(2, 3, 8, 8)
    assert speed.channels_last(x, CPU) is x
    assert speed.channels_last(x, torch.device("cuda")).is_contiguous(memory_format=torch.channels_last)


def test_loader_settings_per_device():
    assert speed.loader_settings(CPU) == {"num_workers": 0, "pin_memory": False}
    gpu = speed.loader_settings(torch.device("cuda"), num_workers=2)
    assert gpu == {"num_workers": 2, "pin_memory": True, "persistent_workers": True}
    with pytest.raises(InputError):
        speed.loader_settings(CPU, num_workers=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_is_an_input_error():
    assert speed.resolve_device("auto") == CPU
    with pytest.raises(InputError, match="no CUDA device is visible"):
        speed.resolve_device("cuda")
