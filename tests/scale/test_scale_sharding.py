"""Shard-stratified order and the per-rank latent cache, in one process (the 2-process run is in
test_scale_distributed.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from applefair.apple.cache import LatentCache
from applefair.engine import samplers
from applefair.engine.sharding import ShardedBatchSampler
from applefair.errors import InputError


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, n: int = 21):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i}


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shards", [2, 4])
def test_rank_batches_come_from_own_shard_and_make_up_the_one_process_batches(drop_last, shards):
    def sampler(size: int, rank: int) -> ShardedBatchSampler:
        return ShardedBatchSampler(21, 8, shards, size, rank, torch.Generator().manual_seed(3), drop_last=drop_last)

    one, ranks = sampler(1, 0), [sampler(2, r) for r in range(2)]
    for _ in range(2):  # two passes: every pass reshuffles, and all samplers stay in step
        glob = list(one)
        local = [list(s) for s in ranks]
        assert len(glob) == len(local[0]) == len(local[1]) == len(one) > 0
        for k, batch in enumerate(glob):
            assert len(batch) == 8 and sorted(batch) == sorted(local[0][k] + local[1][k])
        for r in range(2):
            assert all(i % 2 == r for b in local[r] for i in b)  # only the samples this rank owns
    assert list(one) != glob  # a new pass, a new order
    seen = [i for b in glob for i in b]
    if drop_last:
        assert len(set(seen)) == len(seen)


def test_sharded_order_is_the_one_process_loader_and_keeps_generators_in_step():
    gen, ref_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loader = samplers.make_loader(_Indexed(), 8, shuffle=True, generator=gen, shards=2)
    ref = ShardedBatchSampler(21, 8, 2, generator=ref_gen)
    for _ in range(2):
        got = [b["index"].tolist() for b in loader]
        torch.empty((), dtype=torch.int64).random_(generator=ref_gen)  # a DataLoader draws its workers' seed first
        assert got == list(ref.global_batches())
    assert torch.rand(1, generator=gen).item() == torch.rand(1, generator=ref_gen).item()


def test_sharded_order_includes_every_sample_uniformly():
    """In expectation the same as the global reshuffle: each pass uses every sample once, and a sample
    is in any given batch with probability B / n (so every step's expected gradient is the full one)."""
    n, b, passes = 24, 8, 3000
    sampler = ShardedBatchSampler(n, b, 4, generator=torch.Generator().manual_seed(0))
    counts = np.zeros((n, n // b))
    for _ in range(passes):
        batches = list(sampler.global_batches())
        assert sorted(i for batch in batches for i in batch) == list(range(n))
        for k, batch in enumerate(batches):
            counts[batch, k] += 1
    share = counts / passes
    assert np.abs(share - b / n).max() < 0.04  # 3 sd of a binomial share at 3,000 passes: 0.026


def test_bad_shard_settings_are_input_errors():
    with pytest.raises(InputError, match="multiple of the number of processes"):
        ShardedBatchSampler(20, 8, 3, num_replicas=2)
    with pytest.raises(InputError, match="does not split over cache_shards=3"):
        ShardedBatchSampler(20, 8, 3)
    with pytest.raises(InputError, match="more shards than training samples"):
        ShardedBatchSampler(2, 4, 4)


def test_base_sampler_is_split_like_the_shuffle():
    """Group-balanced sampling (resampling baseline) under N processes: the rank shares of a step
    are the single-process batch drawn by the same WeightedRandomSampler."""
    weights = torch.linspace(0.1, 1.0, 20, dtype=torch.double)

    def batches(size: int, rank: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(7)
        base = WeightedRandomSampler(weights, 20, replacement=True, generator=gen)
        sampler = samplers.ShardSampler(_Indexed(20), size, rank, generator=gen, base=base)
        loader = torch.utils.data.DataLoader(_Indexed(20), batch_size=8 // size, sampler=sampler, drop_last=True,
                                             generator=gen)
        return [b["index"].tolist() for b in loader]

    one, r0, r1 = batches(1, 0), batches(2, 0), batches(2, 1)
    assert len(one) == len(r0) == len(r1) == 2
    for k in range(2):
        assert sorted(one[k]) == sorted(r0[k] + r1[k])


def test_sharded_latent_cache_holds_only_its_samples(tiny_manifest):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.models.registry import create_segmentor

    frame = read_manifest(tiny_manifest)
    train = SegmentationDataset(frame, GroupSpec("sex").fit(frame), "train")
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    full = LatentCache.build(net, [spec.site], train, batch_size=8)
    mine = list(range(1, len(train), 2))
    half = LatentCache.build(net, [spec.site], train, batch_size=8, indices=mine)
    assert len(full) == len(train) and len(half) == len(mine)
    assert half.nbytes() * len(train) == full.nbytes() * len(mine)  # memory in proportion to the shard
    assert full.device == half.device == torch.device("cpu")  # the net's device by default
    idx = torch.tensor([5, 1, 7])
    for name in full.names:
        out = half.lookup(name, idx)
        assert out.device == half.device
        assert torch.equal(out, full.lookup(name, idx))
    with pytest.raises(KeyError, match="another rank's shard"):
        half.lookup(full.names[0], torch.tensor([1, 2]))


def test_disk_cache_with_indices_matches_memory(tmp_path, tiny_manifest):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.models.registry import create_segmentor

    frame = read_manifest(tiny_manifest)
    train = SegmentationDataset(frame, GroupSpec("sex").fit(frame), "train")
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    mem = LatentCache.build(net, [spec.site], train, batch_size=8, indices=range(0, len(train), 2))
    disk = LatentCache.build(net, [spec.site], train, batch_size=8, indices=range(0, len(train), 2),
                             folder=tmp_path / "cache", device="cpu")
    idx = torch.tensor([4, 0, 2])
    for name in mem.names:
        assert torch.allclose(disk.lookup(name, idx), mem.lookup(name, idx))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("store", ["gpu", "cpu", "disk"])
def test_cache_delivers_on_the_gpu_from_any_store(store, tmp_path, tiny_manifest, monkeypatch):
    from applefair.apple import cache as cache_mod
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.models.registry import create_segmentor

    # TF32 convolutions (cuDNN's default) differ from the CPU by ~1e-3; compare in true fp32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    frame = read_manifest(tiny_manifest)
    train = SegmentationDataset(frame, GroupSpec("sex").fit(frame), "train")
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    ref = LatentCache.build(net.eval(), [spec.site], train, batch_size=8)  # on the CPU
    net.cuda()
    if store == "cpu":  # a cache too large for the GPU stays on the CPU
        monkeypatch.setattr(cache_mod, "_home", lambda *_a: torch.device("cpu"))
    folder = tmp_path / "c" if store == "disk" else None
    gpu = LatentCache.build(net, [spec.site], train, batch_size=8, folder=folder, dtype="fp32")
    half = LatentCache.build(net, [spec.site], train, batch_size=8, folder=folder)  # auto: bf16 (or fp16) on a GPU
    assert gpu.device.type == half.device.type == "cuda" and half.dtype in ("bf16", "fp16")
    idx = torch.tensor([3, 0, 5])
    for name in gpu.names:
        out = gpu.lookup(name, idx)
        assert out.device.type == "cuda"
        assert torch.allclose(out.cpu(), ref.lookup(name, idx), atol=1e-4)
        rounded = half.lookup(name, idx)
        assert rounded.dtype == out.dtype and torch.allclose(rounded, out, rtol=1e-2, atol=1e-2)
