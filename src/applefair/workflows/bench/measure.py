"""Measuring a step: wall time, CPU time, peak memory; the machine the numbers come from."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import threading
import time
from collections.abc import Callable

import torch


def rss_mb() -> float:
    """Anonymous resident memory of this process in MiB (heap, tensors; Linux RssAnon).

    File-backed pages, such as a memory-mapped latent cache, are left out: the kernel can drop
    them at any time, so they are not memory the process needs. Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS starts low."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Measure:
    """Wall time and peak RSS of a block: `with Measure() as m: ...; m.seconds, m.peak_mb, m.delta_mb`."""

    def __enter__(self) -> Measure:
        release_memory()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start_mb = self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        self._t0 = self.start_time = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def seconds_so_far(self) -> float:
        """Wall seconds since the block started (a split time inside it)."""
        return time.perf_counter() - self._t0

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._c0
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        self.delta_mb = self.peak_mb - self.start_mb
        self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "peak_rss_mb": round(self.peak_mb, 1), "peak_rss_delta_mb": round(self.delta_mb, 1),
                "cuda_peak_mb": self.cuda_peak_mb}


def attempt(fn: Callable[[], dict]) -> dict:
    """Run one measurement; an exception becomes {'error': ...} so the rest of the bench goes on."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports failures instead of dying
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": cores, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": gpu, "load_average": _loadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _loadavg() -> list[float] | None:
    """Other work on the machine slows every step: wall times are only comparable at equal load."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
