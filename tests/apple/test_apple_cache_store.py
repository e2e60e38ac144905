"""The latent cache's storage: dtypes, the keyed on-disk store (reuse, resume after an interruption or a
kill, one builder at a time) and the options that choose them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from applefair.apple.cache import LatentCache, NothingToCache, build_caches, resolve_cache_dtype
from applefair.engine.arraystore import ArrayStore
from applefair.errors import InputError


class Toy(nn.Module):
    """encoder -> scale -> decoder; the site is `scale`, so `enc` and `scale` are cached."""

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.enc = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = nn.Identity() if gain == 1.0 else _Gain(gain)
        self.dec = nn.Conv2d(4, 1, 3, padding=1)
        self._calls = 0  # images through the encoder (private: not part of the model's fingerprint)

    def forward(self, x):
        self._calls += len(x)
        return self.dec(self.scale(self.enc(x)))


class _Gain(nn.Module):
    def __init__(self, g: float):
        super().__init__()
        self.g = g

    def forward(self, x):
        return x * self.g


class Images(torch.utils.data.Dataset):
    """Random images; `stop_at`: raise KeyboardInterrupt when that item is read (an interrupted build)."""

    def __init__(self, n: int, seed: int = 0, stop_at: int | None = None, delay: float = 0.0):
        self.x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        self.stop_at, self.delay, self.seed = stop_at, delay, seed

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.stop_at:
            raise KeyboardInterrupt
        time.sleep(self.delay)
        return {"image": self.x[i], "mask": torch.zeros(1, 8, 8), "group": 0, "index": i}

    def fingerprint(self) -> str:
        return f"images-{len(self.x)}-{self.seed}"


def _net(seed: int = 0, gain: float = 1.0) -> Toy:
    torch.manual_seed(seed)
    return Toy(gain).eval()


def _all(cache: LatentCache, n: int) -> dict[str, torch.Tensor]:
    return {name: cache.lookup(name, torch.arange(n)) for name in cache.names}


@pytest.mark.parametrize("folder", [False, True])
@pytest.mark.parametrize(("dtype", "tol"), [("fp16", 1e-3), ("bf16", 8e-3)])
def test_half_storage_rounds_once_and_halves_the_bytes(tmp_path, folder, dtype, tol):
    net, data = _net(), Images(12)
    where = tmp_path / "c" if folder else None
    full = LatentCache.build(net, ["scale"], data, batch_size=5, folder=where, dtype="fp32")
    half = LatentCache.build(net, ["scale"], data, batch_size=5, folder=where, dtype=dtype)
    assert (full.dtype, half.dtype) == ("fp32", dtype)
    assert half.nbytes() * 2 == full.nbytes()
    for name, ref in _all(full, 12).items():
        got = half.lookup(name, torch.arange(12))
        assert got.dtype == torch.float32  # cast back to what the module produced
        assert torch.allclose(got, ref, rtol=tol, atol=tol) and not torch.equal(got, ref)
    if folder:  # one store per dtype
        assert full.folder != half.folder and full.folder.parent == half.folder.parent == where


def test_auto_dtype_is_fp32_on_the_cpu_and_half_on_a_gpu(monkeypatch):
    assert resolve_cache_dtype("auto", "cpu") == "fp32"
    assert resolve_cache_dtype("fp16", "cpu") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_cache_dtype("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_cache_dtype("auto", "cuda:0") == "fp16"
    with pytest.raises(InputError, match="cache_dtype 'fp8'"):
        resolve_cache_dtype("fp8", "cpu")


def test_fp16_overflow_is_an_error_not_inf():
    with pytest.raises(InputError, match="exceeds fp16's range"):
        LatentCache.build(_net(gain=1e6), ["scale"], Images(4), dtype="fp16")
    LatentCache.build(_net(gain=1e6), ["scale"], Images(4), dtype="bf16")  # bf16 has fp32's range


def test_a_complete_store_is_reused_without_running_the_encoder(tmp_path):
    net, data = _net(), Images(10)
    first = LatentCache.build(net, ["scale"], data, batch_size=4, folder=tmp_path)
    ran = net._calls
    again = LatentCache.build(net, ["scale"], data, batch_size=4, folder=tmp_path)
    assert net._calls == ran and again.folder == first.folder
    for name, ref in _all(first, 10).items():
        assert torch.equal(again.lookup(name, torch.arange(10)), ref)
    # another deployed model, other data, another shard: other stores
    other = LatentCache.build(_net(seed=1), ["scale"], data, batch_size=4, folder=tmp_path)
    more = LatentCache.build(net, ["scale"], Images(10, seed=1), batch_size=4, folder=tmp_path)
    shard = LatentCache.build(net, ["scale"], data, batch_size=4, folder=tmp_path, indices=range(0, 10, 2))
    assert len({first.folder, other.folder, more.folder, shard.folder}) == 4
    assert len(shard) == 5 and shard.nbytes() * 2 == first.nbytes()


def test_an_interrupted_build_continues_with_the_missing_samples_only(tmp_path):
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        LatentCache.build(net, ["scale"], Images(20, stop_at=13), batch_size=4, folder=tmp_path)
    (store,) = [ArrayStore(p) for p in tmp_path.iterdir()]
    assert not store.meta()["complete"] and list(store.missing()) == list(range(12, 20))
    net._calls = 0
    resumed = LatentCache.build(net, ["scale"], Images(20), batch_size=4, folder=tmp_path)
    assert net._calls == 8  # the 8 samples not written before the interruption
    assert resumed.folder == store.folder and store.meta()["complete"]
    fresh = LatentCache.build(net, ["scale"], Images(20), batch_size=4)
    for name, ref in _all(fresh, 20).items():
        assert torch.equal(resumed.lookup(name, torch.arange(20)), ref)


KILLED_BUILD = """
import sys, torch
sys.path[:0] = [{tests!r}]
from test_apple_cache_store import Images, _net
from applefair.apple.cache import LatentCache
LatentCache.build(_net(), ["scale"], Images(40, delay=0.05), batch_size=2, folder={folder!r})
"""


def test_a_killed_build_continues(tmp_path):
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tests).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_BUILD.format(tests=tests, folder=str(tmp_path))], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until part of the store is written
            stores = [ArrayStore(p) for p in tmp_path.iterdir() if p.is_dir()]
            if stores and stores[0].meta() and 0 < len(stores[0].missing()) < 30:
                break
            assert child.poll() is None, "the build finished or failed before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    (store,) = stores
    left = len(store.missing())
    assert not store.meta()["complete"] and 0 < left < 40
    net = _net()
    resumed = LatentCache.build(net, ["scale"], Images(40), batch_size=2, folder=tmp_path)
    assert net._calls == left and store.meta()["complete"]
    fresh = LatentCache.build(_net(), ["scale"], Images(40), batch_size=2)
    for name, ref in _all(fresh, 40).items():
        assert torch.equal(resumed.lookup(name, torch.arange(40)), ref)


def test_one_builder_at_a_time(tmp_path):
    """While one process holds a store's lock, a second build of the same store waits, then reads it."""
    net, data = _net(), Images(6)
    first = LatentCache.build(net, ["scale"], data, folder=tmp_path)
    store = ArrayStore(first.folder)
    meta = store.meta()
    (store.folder / "filled.npy").unlink()  # make it look unfinished: a second build would have to wait
    store.create(meta["key"], 6, {n: (tuple(a["shape"]), a["dtype"]) for n, a in meta["arrays"].items()},
                 info=meta["info"])
    done = []
    with store.lock():
        t = threading.Thread(target=lambda: done.append(LatentCache.build(net, ["scale"], data, folder=tmp_path)))
        t.start()
        time.sleep(0.3)
        assert not done  # waiting for the lock
    t.join(30)
    assert done and done[0].folder == first.folder and store.meta()["complete"]


def test_build_caches_follows_the_config(tmp_path, apple_setup):
    from applefair.apple.config import AppleConfig
    from applefair.apple.patch import PatchedSegmentor

    net, spec, _groups, split = apple_setup
    patched = PatchedSegmentor(net, {spec.site: nn.Identity()})
    shared = tmp_path / "shared"
    cfg = AppleConfig(cache="disk", cache_dir=str(shared), cache_dtype="fp16")
    train, val = build_caches(patched, [spec.site], split["train"], split["val"], cfg, run_dir=tmp_path / "run")
    assert train.dtype == val.dtype == "fp16" and train.folder.parent == val.folder.parent == shared
    assert len(train) == len(split["train"]) and len(val) == len(split["val"])
    # the default folder is the run folder's; auto with a folder named means disk; memory without one
    disk, _ = build_caches(patched, [spec.site], split["train"], split["val"], AppleConfig(cache="disk"),
                           run_dir=tmp_path / "run")
    assert disk.folder.parent == tmp_path / "run" / "latent_cache" and disk.dtype == "fp32"
    auto, _ = build_caches(patched, [spec.site], split["train"], split["val"],
                           AppleConfig(cache_dir=str(shared)), run_dir=None)
    assert auto.folder.parent == shared
    mem, _ = build_caches(patched, [spec.site], split["train"], split["val"], AppleConfig(), run_dir=tmp_path)
    assert mem.folder is None and isinstance(mem.store[mem.names[0]], torch.Tensor)
    assert build_caches(patched, [spec.site], split["train"], split["val"], AppleConfig(cache="off")) == (None, None)
    with pytest.raises(InputError, match="needs cache: disk"):
        build_caches(patched, [spec.site], split["train"], split["val"],
                     AppleConfig(cache="memory", cache_dir=str(shared)))
    with pytest.raises(InputError, match="cache_dtype"):
        AppleConfig(cache_dtype="fp8")
    patched.remove()


def test_nothing_to_cache_is_its_own_error():
    class Shared(nn.Module):  # the site runs twice per forward: its output is not one latent per image
        def __init__(self):
            super().__init__()
            self.twice = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.twice(self.twice(x))

    with pytest.raises(NothingToCache):
        LatentCache.build(Shared(), ["twice"], Images(2))


def test_train_apple_stores_its_cache_as_configured(tmp_path, apple_setup):
    from applefair.apple.config import AppleConfig
    from applefair.apple.trainer import train_apple

    net, spec, groups, split = apple_setup
    cfg = AppleConfig(epochs=1, d_warmup=0, cache="disk", cache_dir=str(tmp_path / "shared"), cache_dtype="fp16")
    train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True, run_dir=tmp_path / "run")
    stores = [ArrayStore(p) for p in (tmp_path / "shared").iterdir()]
    assert len(stores) == 2 and {s.meta()["info"]["dtype"] for s in stores} == {"fp16"}
