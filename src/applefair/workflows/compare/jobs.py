"""`compare --jobs N`: the comparison's independent blocks in N worker processes.

A block is one (seed, dataset, segmentor): its deployed model is trained once and every method
starts from it, so blocks share nothing but the generated data, which the parent writes before
any worker starts. Workers write their cells exactly as one process would (each cell atomically,
into its own folder), so a run may be resumed with any number of jobs, and the tables, written by
the parent at the end, are the same. Workers are spawned (not forked): CUDA cannot be re-initialised
in a forked child, and a spawned child starts from a clean interpreter.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from applefair.engine.progress import progress_bar
from applefair.engine.runfolder import COMPARE_LOG
from applefair.workflows.compare.cells import plan
from applefair.workflows.compare.settings import CompareSettings

log = logging.getLogger("applefair")


def blocks(settings: CompareSettings, only: Mapping[str, list] | None) -> list[tuple[int, str, str]]:
    """(seed, dataset, segmentor) of every block that has a cell in `plan(settings, only)`, in run order."""
    seen: dict[tuple[int, str, str], None] = {}
    for seed, ds, seg, _ in plan(settings, only):
        seen.setdefault((seed, ds.name, seg.key), None)
    return list(seen)


def _worker(settings: dict, root: str, out: str, only: dict, deadline: float | None, device: str,
            threads: int, log_file: str) -> dict:
    """One block in a fresh process (the arguments are plain data: they cross a process boundary)."""
    import warnings

    from applefair.engine.device import resolve_device
    from applefair.workflows.compare.grid import run_cells

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [pid {os.getpid()}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return run_cells(CompareSettings.model_validate(settings), Path(root), Path(out), only, deadline,
                         quiet=True, dev=resolve_device(device))
    finally:
        log.removeHandler(handler)
        handler.close()


def default_threads(jobs: int) -> int:
    """torch CPU threads per process when none are given: the threads torch would use here (OMP_NUM_THREADS,
    else the usable cores) shared among the jobs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores) // jobs)


def run_blocks(settings: CompareSettings, root: Path, out: Path, only: Mapping[str, list] | None,
               deadline: float | None, quiet: bool, device: str, jobs: int, threads: int) -> dict:
    """Every block of the plan in `jobs` worker processes (`threads` torch threads each); returns the summed
    cell counts."""
    from applefair.workflows.compare.grid import prepare_dataset

    todo = blocks(settings, only)
    for name in dict.fromkeys(ds for _, ds, _ in todo):  # generate each dataset once, before any worker reads it
        prepare_dataset(next(d for d in settings.datasets if d.name == name), root, out)
    counts = {"run": 0, "skipped": 0, "failed": 0, "left": 0}
    base = {k: list(v) for k, v in (only or {}).items() if v}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool, \
            progress_bar(quiet) as bar:
        task = bar.add_task(f"compare ({jobs} jobs)", total=len(todo), info="")
        futures = {pool.submit(_worker, settings.model_dump(), str(root), str(out),
                               {**base, "seeds": [seed], "datasets": [ds], "segmentors": [seg]},
                               deadline, device, threads, str(out / COMPARE_LOG)): (seed, ds, seg)
                   for seed, ds, seg in todo}
        for fut in as_completed(futures):
            seed, ds, seg = futures[fut]
            for k, v in fut.result().items():  # an InputError or OutputError in a worker stops the run here
                counts[k] += v
            bar.update(task, advance=1, info=f"{ds}/{seg}/seed{seed}")
            log.info("block %s/%s/seed%d finished", ds, seg, seed)
    return counts
