"""Worker for the distributed tests: trains a tiny model, rank 0 saves the weights.

Run as `python tests/scale/scale_ddp_worker.py MODES OUT_DIR [MANIFEST]` (one process) or under
`torchrun --nproc_per_node 2` (two); rank 0 writes OUT_DIR/<mode>.safetensors and the test
compares them with a one-process run. MODES (comma-separated): toy (a small BatchNorm CNN
trained with the distributed helpers), erm (the ERM trainer), apple (the APPLE trainer),
apple_sharded (APPLE with `cache_shards=2`: each rank caches half the training split),
groupdro and resampling (the baselines, through `get_method(...).fit`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from applefair.engine import (
    distributed,  # noqa: E402
    samplers,
)
from applefair.engine.io import save_tensors  # noqa: E402


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 1, 16, 16, generator=g)
        self.y = (self.x.mean((1, 2, 3), keepdim=True) > 0).float().expand(-1, 1, 16, 16).clone()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "mask": self.y[i], "group": i % 2, "index": i}


def toy() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
    model = distributed.wrap(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = samplers.make_loader(_Toy(), batch_size=8, shuffle=True, seed=1)
    for _ in range(3):
        for batch in loader:
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch["image"]), batch["mask"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.state_dict()


def _data(manifest: str, float64: bool = False):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest

    class Float64(SegmentationDataset):
        def __getitem__(self, i: int) -> dict:
            return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in super().__getitem__(i).items()}

    kind = Float64 if float64 else SegmentationDataset
    frame = read_manifest(manifest)
    groups = GroupSpec("sex").fit(frame)
    return kind(frame, groups, "train"), kind(frame, groups, "val"), groups


@contextlib.contextmanager
def _float64():
    """APPLE's Adam steps magnify float32 rounding: the order of the 2-process gradient average alone moves
    the logits by up to 3e-3 after 2 epochs (a 1-process run whose initial perturbers are nudged by a
    relative 1e-7 moves them by 2e-4). In float64 that noise is ~1e-15, so the comparison can be exact."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def erm(manifest: str) -> dict[str, torch.Tensor]:
    from applefair.models.registry import create_segmentor
    from applefair.training.erm import TrainConfig, train_segmentor

    train, val, groups = _data(manifest)
    torch.manual_seed(0)
    net, _ = create_segmentor("unet", tiny=True)
    train_segmentor(net, train, val, groups, TrainConfig(epochs=2, batch_size=8, seed=0, optimizer="sgd", lr=0.01),
                    quiet=True)  # SGD: Adam would blow rounding noise in zero-gradient biases up to 1e-3
    return {**net.state_dict(), "logits": _logits(net, val)}


def _apple_float64(manifest: str, **options) -> dict[str, torch.Tensor]:
    """APPLE on the tiny U-Net in float64 (`_float64`): its perturbers and validation logits."""
    from applefair.apple.trainer import AppleConfig, train_apple
    from applefair.models.registry import create_segmentor

    train, val, groups = _data(manifest, float64=True)
    with _float64():
        torch.manual_seed(0)
        net, spec = create_segmentor("unet", tiny=True)
        patched = train_apple(net, spec.site, train, val, groups,
                              AppleConfig(epochs=2, batch_size=8, width=8, seed=0, selection="last",
                                          d_dropout=0.0, **options),  # dropout draws per-rank random masks
                              quiet=True).patched
        return {**patched.perturbers.state_dict(), "logits": _logits(patched, val)}


def apple(manifest: str) -> dict[str, torch.Tensor]:
    return _apple_float64(manifest)


CACHES: list[dict] = []  # what each LatentCache.build made in this process (apple_sharded)


def apple_sharded(manifest: str) -> dict[str, torch.Tensor]:
    """APPLE with the shard-stratified order over 2 shards; records this rank's cache size."""
    from applefair.apple.cache import LatentCache

    original = LatentCache.build.__func__

    def recording_build(cls, *args, **kwargs):
        cache = original(cls, *args, **kwargs)
        CACHES.append({"held": len(cache), "bytes": cache.nbytes(), "of": len(cache.rows),
                       "indices": [int(i) for i in (cache.rows >= 0).nonzero().flatten()]})
        return cache

    LatentCache.build = classmethod(recording_build)
    try:
        return _apple_float64(manifest, cache="memory", cache_shards=2)
    finally:
        LatentCache.build = classmethod(original)


def baseline(method: str, manifest: str) -> dict[str, torch.Tensor]:
    """A baseline fitted through its public interface; the last epoch is kept (as APPLE's `selection:
    last`), so that the comparison is of trained weights, not of a selection that may pick epoch 0."""
    import itertools

    from applefair.baselines import base, get_method
    from applefair.models.registry import create_segmentor

    ticks = itertools.count()
    base.selection_score = lambda _summary: float(next(ticks))  # every epoch beats the one before
    train, val, groups = _data(manifest)
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    res = get_method(method).fit(net, spec, train, val, groups,
                                 base.Budget(epochs=2, batch_size=8, seed=0, tolerance=1.0, optimizer="sgd", lr=0.01),
                                 quiet=True)  # SGD: see erm()
    assert res.selected_epoch == 2, res.selected_epoch
    losses = torch.tensor([row["loss"] for row in res.history[1:]], dtype=torch.float64)
    return {**res.model.state_dict(), "logits": _logits(res.model, val), "loss_history": losses}


@torch.no_grad()
def _logits(model: nn.Module, dataset) -> torch.Tensor:
    """The trained model's outputs on the validation images: what 'the same result' means."""
    from applefair.models.forward import segment

    model.eval()
    batch = {"image": torch.stack([dataset[i]["image"] for i in range(len(dataset))]),
             "mask": torch.stack([dataset[i]["mask"] for i in range(len(dataset))])}
    return segment(model, batch)


MODES = {"toy": toy, "erm": erm, "apple": apple, "apple_sharded": apple_sharded,
         "groupdro": lambda m: baseline("groupdro", m), "resampling": lambda m: baseline("resampling", m)}


def main() -> None:
    modes, out = sys.argv[1].split(","), sys.argv[2]
    if os.environ.get("SCALE_NO_SYNC_BN"):  # a control: per-rank BatchNorm statistics must break agreement
        distributed.sync_batchnorm = lambda module: module
    if os.environ.get("SCALE_LOCAL_GROUPS"):  # a control: per-rank group means must break groupdro's agreement
        distributed.all_reduce_sum_grad = lambda x: x
    distributed.init()
    for mode in modes:
        CACHES.clear()
        state = MODES[mode](*sys.argv[3:]) if mode != "toy" else toy()
        caches = distributed.all_gather_objects(list(CACHES))  # every rank's cache, rank order
        if distributed.is_main():
            save_tensors(os.path.join(out, f"{mode}.safetensors"), state,
                         metadata={"world_size": str(distributed.world_size()), "caches": json.dumps(caches)})
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main()
