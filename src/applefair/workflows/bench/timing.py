"""Timing that holds up on a shared machine: wall clock, a fixed thread count, interleaved variants,
medians with bootstrap intervals, and epoch clocks read from the trainers' progress bars.

Process CPU time adds up every thread's work (and spinning), so it is not latency; wall time is,
but it moves with other load on the machine. Timing the variants in interleaved rounds (the order
rotating and reversing from round to round) makes a drift in load hit every variant alike, and a
ratio of medians with a bootstrap interval over rounds says how far the number can be trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from applefair.engine.progress import ProgressEvent, watch_progress


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to `threads` inside (None: left as it is); yields the count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def ratio_ci(variant: list[float], reference: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """median(variant) / median(reference) with a percentile bootstrap 95% interval, resampling rounds as
    pairs (the two runs of one round saw the same machine load)."""
    a, b = np.asarray(variant, dtype=float), np.asarray(reference, dtype=float)
    point = float(np.median(a) / np.median(b))
    if len(a) < 2:
        return {"ratio": round(point, 4), "ci95": None}
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"ratio": round(point, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def median_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """The median and its percentile bootstrap 95% interval."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return {"median": round(float(np.median(a)), 6), "ci95": None}
    boot = np.median(a[np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"median": round(float(np.median(a)), 6), "ci95": [round(float(lo), 6), round(float(hi), 6)]}


def _order(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    order = names[k:] + names[:k]
    return order if (r // len(names)) % 2 == 0 else order[::-1]


def interleaved(fns: dict[str, Callable[[], object]], reference: str, min_repeats: int = 5, max_repeats: int = 200,
                max_seconds: float = 60.0, width: float = 0.10, cuda: bool = False, seed: int = 0) -> dict:
    """Wall seconds per call of each of `fns`, timed in interleaved rounds after one warm-up call each.

    Rounds continue until every ratio to `reference` has a 95% interval narrower than `width` (checked
    from `min_repeats` rounds on), or `max_repeats` rounds, or `max_seconds` (never fewer than
    `min_repeats` rounds). `ci_ok` says whether the width was reached. On CUDA each call is synchronised.
    """
    names = list(fns)

    def call(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for k in names:  # warm-up: allocations, lazy initialisation, autotuning
        call(fns[k])
    times: dict[str, list[float]] = {k: [] for k in names}
    start = time.perf_counter()
    ratios: dict[str, dict] = {}
    ok = False
    for r in range(max_repeats):
        for k in _order(names, r):
            times[k].append(call(fns[k]))
        if r + 1 < min_repeats:
            continue
        ratios = {k: ratio_ci(times[k], times[reference], seed=seed) for k in names if k != reference}
        ok = all(v["ci95"] is not None and v["ci95"][1] - v["ci95"][0] < width for v in ratios.values())
        if ok or time.perf_counter() - start > max_seconds:
            break
    if not ratios:
        ratios = {k: ratio_ci(times[k], times[reference], seed=seed) for k in names if k != reference}
    return {"clock": "wall", "repeats": len(times[reference]), "ci_width_target": width, "ci_ok": ok,
            "seconds": round(time.perf_counter() - start, 2),
            "median_ms": {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()},
            "ratios": ratios, "times_ms": {k: [round(t * 1e3, 3) for t in v] for k, v in times.items()}}


class EpochClock:
    """The epoch stamps of the trainer running inside: the moments its per-epoch progress bar advances.

    `with EpochClock(epochs) as clock: method.fit(...)`; then `clock.split()` gives the time until the
    first epoch ended (set-up, epoch-0 validation, a latent cache's build, epoch 1), the later epochs
    one by one, and the time after the last (restoring the selected state).
    """

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.events: list[ProgressEvent] = []

    def __enter__(self) -> EpochClock:
        self._watch = watch_progress(self._record)
        self._watch.__enter__()
        self.start = time.perf_counter()
        return self

    def _record(self, event: ProgressEvent) -> None:
        if event.total == self.epochs and event.description != "evaluate":
            self.events.append(event)

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        self._watch.__exit__(*exc)

    def stamps(self) -> list[float]:
        """Seconds from the start to the end of each epoch, of the bar that advanced `epochs` times."""
        by_bar: dict[str, list[float]] = {}
        for e in self.events:
            by_bar.setdefault(e.description, []).append(e.time - self.start)
        done = [v for v in by_bar.values() if len(v) == self.epochs]
        return done[-1] if done else []

    def split(self) -> dict:
        """{first_s, epoch_s (epochs 2..E), tail_s}; empty where the trainer ran fewer epochs than asked."""
        s = self.stamps()
        if not s:
            return {}
        return {"first_s": round(s[0], 3), "epoch_s": [round(b - a, 3) for a, b in zip(s, s[1:], strict=False)],
                "tail_s": round(self.end - self.start - s[-1], 3)}


def project(split: dict, epochs: int) -> float | None:
    """Seconds a run of `epochs` epochs would take: the measured time to the end of epoch 1, the median
    later epoch for each further epoch, and the measured tail (a derived number, not a measurement)."""
    if not split or not split.get("epoch_s"):
        return None
    return split["first_s"] + (epochs - 1) * float(np.median(split["epoch_s"])) + split["tail_s"]
