"""Load throughput (images/s) of SegmentationDataset: lazy reads, worker processes, caches.

Writes `--n` synthetic nodule images at `--size` px as PNG, then times full passes through a
DataLoader (batch 16) under: lazy with 0 / 2 workers, the in-memory cache (second pass), and
the on-disk cache of decoded arrays (a fresh dataset reading the cache). Peak resident memory
(ru_maxrss) shows that the lazy pass does not hold the dataset.

Example: OMP_NUM_THREADS=1 python bench/data_load_throughput.py --n 300 --size 512
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from applefair.data import SegmentationDataset, generate, load_dataset


def rss_mib() -> float:
    """Current resident memory of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_pass(ds: SegmentationDataset, workers: int) -> float:
    t = time.perf_counter()
    n = 0
    for batch in DataLoader(ds, batch_size=16, num_workers=workers, persistent_workers=False):
        n += len(batch["image"])
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--data", type=Path, default=None, help="Existing dataset to read instead of generating one.")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        data = args.data or generate(Path(tmp) / "data", n=args.n, size=args.size, seed=0).parent
        frame = load_dataset(data)
        results = {}
        rss0 = rss_mib()
        results["lazy, 0 workers"] = one_pass(SegmentationDataset(frame, cache=False), 0)
        rss_lazy = rss_mib() - rss0
        results["lazy, 2 workers"] = one_pass(SegmentationDataset(frame, cache=False), 2)
        mem = SegmentationDataset(frame, cache=True)
        rss1 = rss_mib()
        one_pass(mem, 0)
        rss_mem = rss_mib() - rss1
        results["memory cache, 2nd pass"] = one_pass(mem, 0)
        disk = Path(tmp) / "cache"
        one_pass(SegmentationDataset(frame, cache=False, cache_dir=disk), 0)
        results["disk cache, fresh dataset"] = one_pass(SegmentationDataset(frame, cache=False, cache_dir=disk), 0)
        results["resize to 256, lazy, 0 workers"] = one_pass(SegmentationDataset(frame, cache=False, size=256), 0)
    print(f"{len(frame)} images, {args.size} px, cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for k, v in results.items():
        print(f"  {k:34s} {v:8.1f} images/s")
    print(f"  memory growth over a lazy pass: {rss_lazy:.0f} MiB; over a memory-cached pass: {rss_mem:.0f} MiB "
          f"(decoded dataset: {len(frame) * args.size**2 * 8 / 2**20:.0f} MiB); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
