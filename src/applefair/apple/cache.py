"""The latent cache: run the frozen encoder once, then train on what it produced.

The deployed segmentor is frozen and in eval mode, so everything it computes before the
first perturbation is the same at every epoch. The cache finds those modules generically,
from one traced forward: a module whose forward *finished* before the first perturbed
site's output was produced cannot depend on any perturbation. The outermost such modules
(for a MONAI UNet with the bottleneck perturbed: the three down blocks, whose outputs also
feed the skips, and the bottleneck itself) are recorded once per sample; during training
their `forward` is swapped for a lookup, and only the rest of the network (the decoder and
anything downstream of a perturbed site) runs. Hooks still fire, so the perturber sees the
cached f_o exactly as it would see a recomputed one.

Storage dtype (`dtype`): fp32, fp16 or bf16; `auto` is bf16 on GPUs that have it (else fp16)
and fp32 on the CPU. Lookups are cast back to the dtype the module produced, so only the
stored values are rounded (one rounding of f_o; docs/performance.md measures the effect).

Storage is in memory (on the GPU when the network runs there and the cache fits, else on the
CPU), or, given a folder, an on-disk store (`engine.arraystore`) under `folder/<key>`: keyed by
the deployed weights' hash, the data's fingerprint, the sites, the storage dtype and the
samples held, so that later runs of the same model on the same data reuse it without running
the encoder, and a build that was killed continues where it stopped. Reading maps the files,
so memory stays flat in the data set's size. Under torchrun with `cache_shards`, each process
caches only the samples it owns (see applefair.engine.sharding).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from applefair.engine import samplers
from applefair.engine.arraystore import ArrayStore
from applefair.engine.device import module_device, to_device
from applefair.engine.io import data_fingerprint, model_fingerprint
from applefair.engine.runfolder import LATENT_CACHE
from applefair.errors import InputError
from applefair.models.forward import segment
from applefair.models.sites import find_module

if TYPE_CHECKING:
    from applefair.apple.config import AppleConfig
    from applefair.apple.patch import PatchedSegmentor

log = logging.getLogger("applefair")

CACHE_DTYPES = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NAMES = {v: k for k, v in _DTYPES.items()}
_NUMPY = {"fp32": "<f4", "fp16": "<f2", "bf16": "<u2"}  # numpy has no bf16: its bits are kept as uint16
KEY_VERSION = 1  # part of every store's key: a change of what a store holds makes old stores misses


def resolve_cache_dtype(name: str, device: torch.device | str) -> str:
    """'fp32' | 'fp16' | 'bf16' for `name` on `device` (`auto`: bf16 or fp16 on a GPU, fp32 on the CPU)."""
    if name not in CACHE_DTYPES:
        raise InputError(f"cache_dtype '{name}' is not known (expected one of: {', '.join(CACHE_DTYPES)})")
    if name != "auto":
        return name
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def cacheable_modules(net: nn.Module, sites: list[str], batch: dict) -> list[str]:
    """Dotted names of the outermost modules computed before the first perturbed site's output,
    in the order they finish (the build stops the forward pass after the last one)."""
    modules = dict(net.named_modules())
    site_ids = {id(find_module(net, s)) for s in sites}
    clock = [0]
    end: dict[str, int] = {}
    calls: dict[str, int] = {}
    tensor_out: dict[str, bool] = {}
    first_site_end = [None]
    handles = []
    for name, mod in modules.items():
        if name == "":
            continue

        def pre(_m, _i, name=name):
            clock[0] += 1
            calls[name] = calls.get(name, 0) + 1

        def post(m, _i, out, name=name):
            clock[0] += 1
            end[name] = clock[0]
            tensor_out[name] = torch.is_tensor(out)
            if id(m) in site_ids and first_site_end[0] is None:
                first_site_end[0] = clock[0]

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            segment(net, batch)
    finally:
        for h in handles:
            h.remove()
    if first_site_end[0] is None:
        return []
    ok = [n for n in end if end[n] <= first_site_end[0] and calls[n] == 1 and tensor_out[n]]
    return [n for n in ok if not any(n.startswith(o + ".") for o in ok)]


# ----------------------------------------------------------------------------- the store's key


def cache_key(net: nn.Module, sites: Sequence[str], dataset, dtype: str,
              indices: Sequence[int] | None) -> tuple[str, dict]:
    """(key, what it is made of): the deployed model, the data, the sites, the storage dtype, the samples held."""
    held = "all" if indices is None else hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
    info = {"version": KEY_VERSION, "model_sha256": model_fingerprint(net), "data_sha256": data_fingerprint(dataset),
            "sites": list(sites), "dtype": dtype, "samples": held}
    return hashlib.sha256(repr(sorted(info.items())).encode()).hexdigest(), info


# ----------------------------------------------------------------------------- the cache


class NothingToCache(ValueError):
    """No module before the sites can be cached (`cache: auto` then trains without a cache)."""


class _CacheFilled(Exception):
    """Stops a forward pass once every cached module has produced its output."""


def _stop_forward(_module: nn.Module, _inputs, _output) -> None:
    raise _CacheFilled


class LatentCache:
    """Outputs of the frozen, perturbation-independent modules, for every sample of a dataset
    (or, sharded, for the samples one rank owns).

    `rows[i]` is where dataset index i is stored (-1: not held here). `lookup` returns tensors
    on `device`, the device the network runs on, in the dtype each module produced: the store
    lives there when it fits, else on the CPU (or memory-mapped on disk), and each batch is
    copied over. `dtype` is the storage dtype ('fp32', 'fp16', 'bf16').
    """

    def __init__(self, net: nn.Module, names: list[str], store: dict[str, np.ndarray | torch.Tensor],
                 rows: torch.Tensor | None = None, device: torch.device | str = "cpu", dtype: str = "fp32",
                 out_dtypes: dict[str, torch.dtype] | None = None, folder: Path | None = None):
        self.net = net
        self.names = names
        self.store = store
        n = len(next(iter(store.values()))) if store else 0
        self.rows = torch.arange(n) if rows is None else rows
        self.device = torch.device(device)
        self.dtype = dtype
        self.out_dtypes = dict(out_dtypes or {})
        self.folder = folder  # the on-disk store, if any

    def __len__(self) -> int:
        """Samples held (all of them, or this rank's shard)."""
        return int((self.rows >= 0).sum())

    @classmethod
    def build(cls, net: nn.Module, sites: list[str], dataset, batch_size: int = 32,
              folder: str | os.PathLike | None = None, device: torch.device | str | None = None,
              indices: Sequence[int] | None = None, dtype: str = "auto") -> LatentCache:
        """Run the frozen net once over `dataset` (perturbers off) and record the cacheable outputs.

        `folder` set: an on-disk store under `folder/<key>` (reused when complete, continued when a
        build was interrupted). `device`: where `lookup` delivers (default: where `net` lives).
        `indices`: cache only these dataset indices (one rank's shard, `samplers.shard_indices`);
        others cannot be looked up. `dtype`: the storage dtype (`resolve_cache_dtype`).
        """
        dev = module_device(net) if device is None else torch.device(device)
        dtype = resolve_cache_dtype(dtype, dev)
        held = list(range(len(dataset))) if indices is None else sorted(int(i) for i in indices)
        rows = torch.full((len(dataset),), -1, dtype=torch.long)
        rows[torch.as_tensor(held, dtype=torch.long)] = torch.arange(len(held))
        was = net.training
        net.eval()  # the cache is only valid for the frozen model in eval mode (BatchNorm running stats)
        try:
            if folder is None:
                return cls._in_memory(net, sites, dataset, held, rows, batch_size, dev, dtype)
            return cls._on_disk(net, sites, dataset, indices, held, rows, batch_size, Path(folder), dev, dtype)
        finally:
            net.train(was)

    @classmethod
    def _in_memory(cls, net: nn.Module, sites: list[str], dataset, held: list[int], rows: torch.Tensor,
                   batch_size: int, dev: torch.device, dtype: str) -> LatentCache:
        loader = _loader(dataset, held, batch_size, dev)
        names = _names(net, sites, loader, dev)
        store: dict[str, torch.Tensor] = {}
        out_dtypes: dict[str, torch.dtype] = {}

        def sink(pos: torch.Tensor, outs: dict[str, torch.Tensor]) -> None:
            if not store:
                home = _home(dev, len(held), [outs[n] for n in names], _DTYPES[dtype])
                for n in names:
                    store[n] = torch.empty((len(held), *outs[n].shape[1:]), dtype=_DTYPES[dtype], device=home)
                    out_dtypes[n] = outs[n].dtype
            for n in names:
                store[n][pos.to(store[n].device)] = _narrow(n, outs[n], dtype).to(store[n].device)

        _run(net, names, loader, rows, dev, sink)
        return cls(net, names, store, rows, dev, dtype, out_dtypes)

    @classmethod
    def _on_disk(cls, net: nn.Module, sites: list[str], dataset, indices: Sequence[int] | None, held: list[int],
                 rows: torch.Tensor, batch_size: int, folder: Path, dev: torch.device, dtype: str) -> LatentCache:
        key, info = cache_key(net, sites, dataset, dtype, None if indices is None else held)
        store = ArrayStore(folder / key[:20])
        if store.complete(key):
            log.info("latent cache: reusing %s", store.folder)
        else:
            with store.lock():  # one builder; another process asking for the same store waits, then reads it
                if not store.complete(key):
                    _fill_store(store, key, info, net, sites, dataset, held, rows, batch_size, dev, dtype)
        meta = store.meta()["info"]
        out_dtypes = {n: getattr(torch, d) for n, d in meta["out_dtypes"].items()}
        return cls(net, meta["names"], store.open(), rows, dev, dtype, out_dtypes, folder=store.folder)

    def nbytes(self) -> int:
        return int(sum(v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size()
                       for v in self.store.values()))

    def lookup(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """The cached output of module `name` for dataset indices `idx`, on the network's device, in the
        dtype the module produced."""
        pos = self.rows[idx.cpu()]
        if bool((pos < 0).any()):
            missing = idx.cpu()[pos < 0].tolist()[:5]
            raise KeyError(f"latent cache: samples {missing} are not held by this process (another rank's shard)")
        v = self.store[name]
        if isinstance(v, torch.Tensor):
            out = v[pos.to(v.device)]
        else:
            out = _from_numpy(np.ascontiguousarray(v[pos.numpy()]), self.dtype)
        return out.to(self.device, non_blocking=True).to(self.out_dtypes.get(name, torch.float32))

    @contextmanager
    def replay(self, idx: torch.Tensor) -> Iterator[None]:
        """Inside, the cached modules return their recorded outputs for samples `idx`."""
        mods = [find_module(self.net, n) for n in self.names]
        try:
            for n, m in zip(self.names, mods, strict=True):
                m.forward = (lambda *_a, _n=n, **_k: self.lookup(_n, idx))
            yield
        finally:
            for m in mods:
                m.__dict__.pop("forward", None)


def build_caches(patched: PatchedSegmentor, sites: list[str], train, val, cfg: AppleConfig,
                 run_dir: str | os.PathLike | None = None) -> tuple[LatentCache | None, LatentCache | None]:
    """(training cache, validation cache) as `cfg` asks: `cache` (off, or augmenting: none), `cache_dtype`,
    `cache_dir` (the on-disk store's folder; default the run folder's latent_cache/; with `cache: auto` a
    named folder means on disk) and `cache_shards` (this rank's training samples only; every rank
    validates on the whole split). `cache: auto` trains without a cache where nothing can be cached."""
    if cfg.cache == "off" or cfg.augment:
        return None, None
    if cfg.cache == "memory" and cfg.cache_dir:
        raise InputError(f"cache: memory with cache_dir {cfg.cache_dir}: a cache folder needs cache: disk (or auto)")
    disk = cfg.cache == "disk" or (cfg.cache == "auto" and bool(cfg.cache_dir))
    root = Path(cfg.cache_dir) if cfg.cache_dir else (Path(run_dir) / LATENT_CACHE if run_dir else None)
    folder = root if disk else None
    indices = samplers.shard_indices(len(train)) if cfg.cache_shards else None
    try:
        with patched.disabled():
            caches = (LatentCache.build(patched.net, sites, train, folder=folder, indices=indices,
                                        dtype=cfg.cache_dtype),
                      LatentCache.build(patched.net, sites, val, folder=folder, dtype=cfg.cache_dtype))
    except NothingToCache:
        if cfg.cache != "auto":
            raise
        return None, None
    log.info("latent cache: %s, %s (%.1f MB train, %.1f MB val%s)", caches[0].names, caches[0].dtype,
             caches[0].nbytes() / 2**20, caches[1].nbytes() / 2**20, f", in {folder}" if folder else "")
    return caches


# ----------------------------------------------------------------------------- building


def _loader(dataset, held: Sequence[int], batch_size: int, dev: torch.device) -> DataLoader:
    # a private generator: iterating a loader must not consume the global RNG (cached == uncached)
    data = dataset if len(held) == len(dataset) and list(held) == list(range(len(dataset))) else Subset(dataset, held)
    return DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator(),
                      pin_memory=dev.type == "cuda")


def _names(net: nn.Module, sites: list[str], loader: DataLoader, dev: torch.device) -> list[str]:
    names = cacheable_modules(net, sites, to_device(next(iter(loader)), dev))
    if not names:
        raise NothingToCache(f"nothing before sites {sites} can be cached")
    return names


def _run(net: nn.Module, names: list[str], loader: DataLoader, rows: torch.Tensor, dev: torch.device,
         sink: Callable[[torch.Tensor, dict[str, torch.Tensor]], None]) -> None:
    """Forward every batch up to the last cached module and hand its outputs to `sink(store rows, outputs)`."""
    outs: dict[str, torch.Tensor] = {}
    handles = [find_module(net, n).register_forward_hook(
        lambda _m, _i, o, n=n: outs.__setitem__(n, o.detach())) for n in names]
    # `names` is in order of completion: once the last one has run (and been recorded by the hook
    # above, registered first), the rest of the forward pass (the decoder) is not needed
    handles.append(find_module(net, names[-1]).register_forward_hook(_stop_forward))
    try:
        with torch.no_grad():
            for batch in loader:
                try:
                    segment(net, to_device(batch, dev))
                except _CacheFilled:
                    pass
                sink(rows[batch["index"].cpu()], outs)
    finally:
        for h in handles:
            h.remove()


def _fill_store(store: ArrayStore, key: str, info: dict, net: nn.Module, sites: list[str], dataset,
                held: list[int], rows: torch.Tensor, batch_size: int, dev: torch.device, dtype: str) -> None:
    """Write every missing row of `store`: all of them into a new store, or the rest of an interrupted build
    of this key (the store is created at the first batch, when the outputs' shapes are known)."""
    if store.matches(key):
        names = store.meta()["info"]["names"]
        missing = store.missing()
        log.info("latent cache: continuing %s (%d of %d samples missing)", store.folder, len(missing), len(held))
    else:
        names = _names(net, sites, _loader(dataset, held, batch_size, dev), dev)
        missing = np.arange(len(held))
    writers = []

    def sink(pos: torch.Tensor, outs: dict[str, torch.Tensor]) -> None:
        if not writers:
            if not store.matches(key):
                arrays = {n: (tuple(outs[n].shape[1:]), _NUMPY[dtype]) for n in names}
                out_dtypes = {n: str(outs[n].dtype).removeprefix("torch.") for n in names}
                store.create(key, len(held), arrays, info={**info, "names": names, "out_dtypes": out_dtypes})
            writers.append(store.writer())
        writers[0].write(pos.numpy(), {n: _to_numpy(_narrow(n, outs[n], dtype), dtype) for n in names})

    if len(missing):
        _run(net, names, _loader(dataset, [held[i] for i in missing], batch_size, dev), rows, dev, sink)
    store.finish()


def _narrow(name: str, out: torch.Tensor, dtype: str) -> torch.Tensor:
    """`out` in the storage dtype; fp16's range (65,504) exceeded is an error, not a silent inf."""
    stored = out.to(_DTYPES[dtype])
    if dtype == "fp16" and not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(out).all()):
        raise InputError(f"cache_dtype fp16: the output of '{name}' exceeds fp16's range (max |x| = "
                         f"{float(out.abs().max()):.3g}); use cache_dtype bf16 or fp32")
    return stored


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.cpu()
    return t.view(torch.int16).numpy().view(np.uint16) if dtype == "bf16" else t.numpy()


def _from_numpy(a: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if dtype == "bf16" else torch.from_numpy(a)


def _home(dev: torch.device, n_held: int, first: list[torch.Tensor], dtype: torch.dtype) -> torch.device:
    """Keep the in-memory store on the GPU when it takes at most half of the GPU's free memory
    (no copy per batch); otherwise on the CPU, and `lookup` copies each batch over."""
    if dev.type != "cuda":
        return torch.device("cpu")
    per_sample = sum(o[0].numel() * torch.empty((), dtype=dtype).element_size() for o in first)
    free, _total = torch.cuda.mem_get_info(dev)
    return dev if per_sample * n_held <= 0.5 * free else torch.device("cpu")
