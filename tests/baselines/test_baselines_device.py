"""Every method runs where the network it is given lives (CUDA checks run only on a GPU machine)."""

from __future__ import annotations

import copy

import pytest
import torch

from applefair.baselines import Budget, get_method, list_methods
from applefair.baselines.base import finetune
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.device import module_device
from applefair.engine.io import state_dict_hash
from applefair.errors import InputError
from applefair.models.forward import segment
from applefair.models.registry import create_segmentor

OPTIONS = {"apple": {"width": 4}, "faap": {"width": 4}}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def setup(tiny_frame):
    groups = GroupSpec("sex").fit(tiny_frame)
    split = {s: SegmentationDataset(tiny_frame, groups, s) for s in ("train", "val", "test")}
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    return net.eval(), spec, groups, split


def test_finetune_hands_steps_batches_on_the_model_device_and_sgd_option(setup):
    _net, _spec, groups, split = setup
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    seen: list[tuple[torch.device, ...]] = []

    def step(batch: dict, fwd: torch.nn.Module) -> torch.Tensor:
        seen.append(tuple(v.device for v in batch.values() if torch.is_tensor(v)))
        assert fwd is model  # one process: no DDP wrapper
        return torch.nn.functional.binary_cross_entropy_with_logits(segment(fwd, batch), batch["mask"])

    finetune(model, model, split["train"], split["val"], groups,
             Budget(epochs=1, batch_size=8, optimizer="sgd", tolerance=1.0), step, "x", quiet=True)
    assert seen and all(d == module_device(model) for devs in seen for d in devs)
    with pytest.raises(InputError, match="key 'optimizer'.*'lbfgs'"):
        Budget.from_dict({"optimizer": "lbfgs"})


@cuda
@pytest.mark.parametrize("name", list_methods())
def test_every_method_fits_and_predicts_on_cuda(setup, name):
    net, spec, groups, split = setup
    dev = torch.device("cuda")
    gpu_net = copy.deepcopy(net).to(dev)
    before = state_dict_hash(gpu_net)
    res = get_method(name).fit(gpu_net, spec, split["train"], split["val"], groups,
                               Budget(epochs=1, batch_size=8), OPTIONS.get(name), quiet=True)
    assert state_dict_hash(gpu_net) == before
    assert all(p.device.type == "cuda" for p in res.model.parameters())
    batch = torch.utils.data.default_collate([split["test"][i] for i in range(4)])
    with torch.no_grad():
        out = segment(res.model, {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()})
    assert out.device.type == "cuda" and torch.isfinite(out).all()
