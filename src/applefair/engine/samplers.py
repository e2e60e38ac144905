"""Data order for one or many processes: this rank's share of the batches one process would draw.

Without torchrun every loader here yields exactly what a plain shuffled `DataLoader` yields, so a
trainer builds its loader with `make_loader` unconditionally (see `applefair.engine.distributed`
for why N processes then train the same model as one).
"""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from applefair.engine.distributed import init, rank, world_size
from applefair.errors import InputError


class ShardSampler(DistributedSampler):
    """This rank's share of the order a single process would use, drawn from a shared generator.

    The order is exactly that of `DataLoader(shuffle=True, generator=g)` in one process (a
    RandomSampler on `g`, consumed at the same moments), split round-robin over the ranks, so
    (1) with one process nothing changes, and (2) with N processes the N per-rank batches of a
    step together are the single-process batch of that step. Every rank holds the same
    generator state, so other draws from it (e.g. batch flips) stay in step too. Without a
    generator, a private one seeded with `seed` is used (then each pass reshuffles).

    `base`: another single-process order to split instead of the shuffle (e.g. a
    WeightedRandomSampler built on the same generator, for group-balanced sampling); it must
    yield len(dataset) indices and draw only from the shared generator.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, generator: torch.Generator | None = None, base: Sampler | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        if generator is None:
            generator = getattr(base, "generator", None) or torch.Generator().manual_seed(seed)
        self.generator = generator
        self.base = base

    def __iter__(self):
        n, size = len(self.dataset), self.num_replicas
        if self.base is not None:
            order = iter(self.base)
        else:
            order = iter(RandomSampler(self.dataset, generator=self.generator)) if self.shuffle else iter(range(n))
        head: list[int] = []
        while True:
            group = list(itertools.islice(order, size))
            if not head:
                head = group
            if len(group) == size:
                yield group[self.rank]
                continue
            if group and not self.drop_last:  # pad the last group from the start, as DistributedSampler does
                group += (head * size)[: size - len(group)]
                yield group[self.rank]
            return

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)


def per_rank_batch(batch_size: int, size: int | None = None) -> int:
    """The per-process share of a global batch; the global batch must split evenly."""
    size = world_size() if size is None else size
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: expected a positive integer")
    if batch_size % size:
        raise InputError(f"batch_size={batch_size} does not split over {size} processes "
                         f"(expected a multiple of the number of processes)")
    return batch_size // size


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                generator: torch.Generator | None = None, num_workers: int = 0, pin_memory: bool = False,
                sampler: Sampler | None = None, shards: int = 0, **kwargs) -> DataLoader:
    """A loader over this rank's share of each global batch of `batch_size`.

    With one process it yields exactly what `DataLoader(dataset, batch_size, shuffle=shuffle,
    generator=generator, drop_last=drop_last)` yields (or, given a `sampler` drawing from
    `generator`, `DataLoader(dataset, batch_size, sampler=sampler, generator=generator, ...)`);
    with N processes, each rank gets `batch_size / N` samples of every one of those batches
    (see `ShardSampler`).

    `shards` > 0: the shard-stratified order of `applefair.engine.sharding.ShardedBatchSampler` instead,
    in which every rank only ever sees the samples it owns (`shard_indices`), so that it can keep
    a per-rank latent cache; one process with the same `shards` draws the same global batches.
    """
    init()
    n, r = world_size(), rank()
    extra = dict(kwargs)
    if num_workers > 0:
        extra.setdefault("persistent_workers", True)
    if shards:
        from applefair.engine.sharding import ShardedBatchSampler

        if sampler is not None:
            raise ValueError("make_loader: a base sampler and shards cannot be combined")

        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        batches = ShardedBatchSampler(len(dataset), batch_size, shards, n, r, generator, shuffle=shuffle,
                                      drop_last=drop_last)
        return DataLoader(dataset, batch_sampler=batches, generator=generator, num_workers=num_workers,
                          pin_memory=pin_memory, **extra)
    sampler = ShardSampler(dataset, n, r, shuffle=shuffle, seed=seed, drop_last=drop_last, generator=generator,
                           base=sampler)
    # the loader draws its workers' base seed from the generator too, as DataLoader(generator=g) does
    return DataLoader(dataset, batch_size=per_rank_batch(batch_size, n), sampler=sampler, drop_last=drop_last,
                      generator=sampler.generator, num_workers=num_workers, pin_memory=pin_memory, **extra)


def shard_indices(length: int) -> list[int]:
    """The indices this rank owns out of `length` (strided, i % world_size == rank): those of a
    per-rank latent cache, and the only ones `make_loader(..., shards=K)` gives this rank."""
    return list(range(rank(), length, world_size()))
