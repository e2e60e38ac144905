"""The shard-stratified sample order: global batches that N processes can draw from their own shards.

A per-rank latent cache (each of N processes keeps the encoder outputs of 1/N of the training
set) only works if every rank's share of every global batch comes from the samples it owns.
The plain distributed order (`samplers.ShardSampler`) cannot give that: it reproduces one
process's fully shuffled batches, whose samples fall on the ranks at random. This order is
built so that it can:

    the data set is cut into K fixed, strided shards (sample i is in shard i % K);
    each epoch, every shard is permuted on its own (shard 0 first, all from one generator);
    global batch k = the k-th slice of B / K samples of every shard, shard 0's slice first.

Rank r of N (K a multiple of N) owns the shards s with s % N == r, i.e. exactly the samples
with i % N == r (`samplers.shard_indices`), and its local batch k is its shards' slices.
So the union of the N local batches of a step is the global batch, and one process asked for
the same K draws the same global batches in the same order: N processes with K = N shards
equal one process with K = N shards (up to rounding), and each rank caches only its shard.
They do not equal one process with the default order (K = 0), whose batches mix samples freely;
that would need the ranks to exchange latents (see docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from applefair.errors import InputError


class ShardedBatchSampler(Sampler[list[int]]):
    """Per-rank batches (lists of dataset indices) of the shard-stratified order; see the module doc."""

    def __init__(self, length: int, batch_size: int, shards: int, num_replicas: int = 1, rank: int = 0,
                 generator: torch.Generator | None = None, shuffle: bool = True, drop_last: bool = True):
        if shards < 1 or shards % num_replicas:
            raise InputError(f"cache_shards={shards}: expected a positive multiple of the number of processes "
                             f"({num_replicas})")
        if batch_size % shards:
            raise InputError(f"batch_size={batch_size} does not split over cache_shards={shards} "
                             f"(expected a multiple of the number of shards)")
        if length < shards:
            raise InputError(f"cache_shards={shards}: more shards than training samples ({length})")
        self.length, self.batch_size, self.shards = length, batch_size, shards
        self.num_replicas, self.rank = num_replicas, rank
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.piece = batch_size // shards  # samples of each shard in every global batch

    def owned_shards(self) -> list[int]:
        return [s for s in range(self.shards) if s % self.num_replicas == self.rank]

    def __len__(self) -> int:
        sizes = [len(range(s, self.length, self.shards)) for s in range(self.shards)]
        return min(sizes) // self.piece if self.drop_last else -(-max(sizes) // self.piece)

    def _orders(self) -> list[list[int]]:
        """Every shard's order for this pass; every rank draws all of them, so generators stay in step."""
        out = []
        for s in range(self.shards):
            idx = torch.arange(s, self.length, self.shards)
            if self.shuffle:
                idx = idx[torch.randperm(len(idx), generator=self.generator)]
            out.append(idx.tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        orders, count = self._orders(), len(self)
        mine = self.owned_shards()
        for k in range(count):
            batch: list[int] = []
            for s in mine:
                order = orders[s]
                # without drop_last, shorter shards wrap around to fill the last batch
                batch += [order[j % len(order)] for j in range(k * self.piece, (k + 1) * self.piece)]
            yield batch

    def global_batches(self) -> Iterator[list[int]]:
        """The global batches of one pass (all shards), for checks; draws from the generator like a pass."""
        orders, count = self._orders(), len(self)
        for k in range(count):
            yield [orders[s][j % len(orders[s])] for s in range(self.shards)
                   for j in range(k * self.piece, (k + 1) * self.piece)]
