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

Storage is in memory (on the GPU when the network runs there and the cache fits, else on the
CPU), or in memory-mapped .npy files under a folder when it is large. Under torchrun with
`cache_shards`, each process caches only the samples it owns (see applefair.engine.sharding).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from applefair.engine.device import module_device, to_device
from applefair.models.forward import segment
from applefair.models.sites import find_module


def cacheable_modules(net: nn.Module, sites: list[str], batch: dict) -> list[str]:
    """Dotted names of the outermost modules computed before the first perturbed site's output,
    in the order they finish (the build stops the forward pass after the last one)."""
    modules = dict(net.named_modules())
    site_ids = {id(find_module(net, s)) for s in sites}
    clock = [0]
    start: dict[str, int] = {}
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
            start.setdefault(name, clock[0])
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


class _CacheFilled(Exception):
    """Stops a forward pass once every cached module has produced its output."""


def _stop_forward(_module: nn.Module, _inputs, _output) -> None:
    raise _CacheFilled


class LatentCache:
    """Outputs of the frozen, perturbation-independent modules, for every sample of a dataset
    (or, sharded, for the samples one rank owns).

    `rows[i]` is where dataset index i is stored (-1: not held here). `lookup` returns tensors
    on `device`, the device the network runs on: the store lives there when it fits, else on
    the CPU (or memory-mapped on disk), and each batch is copied over.
    """

    def __init__(self, net: nn.Module, names: list[str], store: dict[str, np.ndarray | torch.Tensor],
                 rows: torch.Tensor | None = None, device: torch.device | str = "cpu"):
        self.net = net
        self.names = names
        self.store = store
        n = len(next(iter(store.values()))) if store else 0
        self.rows = torch.arange(n) if rows is None else rows
        self.device = torch.device(device)

    def __len__(self) -> int:
        """Samples held (all of them, or this rank's shard)."""
        return int((self.rows >= 0).sum())

    @classmethod
    def build(cls, net: nn.Module, sites: list[str], dataset, batch_size: int = 32,
              folder: str | os.PathLike | None = None, device: torch.device | str | None = None,
              indices: Sequence[int] | None = None) -> LatentCache:
        """Run the frozen net once over `dataset` (perturbers off) and record the cacheable outputs.

        `folder` set: memory-mapped .npy files there (for data sets larger than memory).
        `device`: where `lookup` delivers (default: where `net` lives). `indices`: cache only these
        dataset indices (one rank's shard, `samplers.shard_indices`); others cannot be looked up.
        """
        dev = module_device(net) if device is None else torch.device(device)
        n_total = len(dataset)
        rows = torch.full((n_total,), -1, dtype=torch.long)
        if indices is None:
            rows = torch.arange(n_total)
        else:
            indices = sorted(int(i) for i in indices)
            rows[torch.as_tensor(indices, dtype=torch.long)] = torch.arange(len(indices))
            dataset = Subset(dataset, indices)
        # a private generator: iterating a loader must not consume the global RNG (cached == uncached)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator(),
                            pin_memory=dev.type == "cuda")
        was = net.training
        net.eval()  # the cache is only valid for the frozen model in eval mode (BatchNorm running stats)
        try:
            return cls._build(net, sites, loader, len(dataset), folder, rows, dev)
        finally:
            net.train(was)

    @classmethod
    def _build(cls, net: nn.Module, sites: list[str], loader: DataLoader, n_held: int,
               folder: str | os.PathLike | None, rows: torch.Tensor, dev: torch.device) -> LatentCache:
        first = to_device(next(iter(loader)), dev)
        names = cacheable_modules(net, sites, first)
        if not names:
            raise ValueError(f"nothing before sites {sites} can be cached")
        store: dict[str, np.ndarray | torch.Tensor] = {}
        outs: dict[str, torch.Tensor] = {}
        handles = [find_module(net, n).register_forward_hook(
            lambda _m, _i, o, n=n: outs.__setitem__(n, o.detach())) for n in names]
        # `names` is in order of completion: once the last one has run (and been recorded by the hook
        # above, registered first), the rest of the forward pass (the decoder) is not needed
        handles.append(find_module(net, names[-1]).register_forward_hook(_stop_forward))
        home: torch.device | None = None  # where the in-memory store lives
        try:
            with torch.no_grad():
                for batch in loader:
                    try:
                        segment(net, to_device(batch, dev))
                    except _CacheFilled:
                        pass
                    pos = rows[batch["index"].cpu()]
                    if home is None:
                        home = _home(dev, n_held, [outs[n] for n in names]) if folder is None else None
                    for n in names:
                        o = outs[n]
                        if n not in store:
                            shape = (n_held, *o.shape[1:])
                            if folder is None:
                                store[n] = torch.empty(shape, dtype=o.dtype, device=home)
                            else:
                                Path(folder).mkdir(parents=True, exist_ok=True)
                                store[n] = np.lib.format.open_memmap(
                                    Path(folder) / f"{n}.npy", mode="w+", dtype=np.float32, shape=shape)
                        if isinstance(store[n], torch.Tensor):
                            store[n][pos.to(home)] = o.to(home)
                        else:
                            store[n][pos.numpy()] = o.float().cpu().numpy()
        finally:
            for h in handles:
                h.remove()
        return cls(net, names, store, rows, dev)

    def nbytes(self) -> int:
        return int(sum(v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size()
                       for v in self.store.values()))

    def lookup(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """The cached output of module `name` for dataset indices `idx`, on the network's device."""
        pos = self.rows[idx.cpu()]
        if bool((pos < 0).any()):
            missing = idx.cpu()[pos < 0].tolist()[:5]
            raise KeyError(f"latent cache: samples {missing} are not held by this process (another rank's shard)")
        v = self.store[name]
        if isinstance(v, torch.Tensor):
            out = v[pos.to(v.device)]
        else:
            out = torch.from_numpy(np.ascontiguousarray(v[pos.numpy()]))
        return out.to(self.device, non_blocking=True)

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


def _home(dev: torch.device, n_held: int, first: list[torch.Tensor]) -> torch.device:
    """Keep the in-memory store on the GPU when it takes at most half of the GPU's free memory
    (no copy per batch); otherwise on the CPU, and `lookup` copies each batch over."""
    if dev.type != "cuda":
        return torch.device("cpu")
    per_sample = sum(o[0].numel() * o.element_size() for o in first)
    free, _total = torch.cuda.mem_get_info(dev)
    return dev if per_sample * n_held <= 0.5 * free else torch.device("cpu")
