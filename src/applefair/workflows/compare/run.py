"""`applefair compare` as a function: run (or resume) the grid, then write the tables and the report."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from applefair.engine import distributed
from applefair.engine.device import resolve_device
from applefair.engine.logs import run_logging
from applefair.engine.runfolder import COMPARE_LOG, write_config
from applefair.engine.runinfo import run_info
from applefair.errors import InputError
from applefair.report import write_reports
from applefair.workflows.compare.grid import run_cells
from applefair.workflows.compare.jobs import default_threads, run_blocks
from applefair.workflows.compare.settings import CompareSettings
from applefair.workflows.compare.table import write_tables


def run_compare(settings: CompareSettings, root: Path, out: str | os.PathLike, only: Mapping[str, list] | None = None,
                time_limit_min: float | None = None, quiet: bool = False, table_every_s: float = 60.0,
                device: str = "auto", jobs: int = 1, threads: int | None = None) -> dict:
    """Run (or resume) the comparison into `out`; returns counts of cells run / skipped / failed / left.

    The tables are rewritten at most every `table_every_s` seconds while running, and at the end.
    Every model trains and evaluates on `device` (auto, cpu, cuda, cuda:N); a cell's key does not
    depend on it, so a run may resume on another device (each result records where it ran).
    `jobs` > 1 runs the (seed, dataset, segmentor) blocks in that many worker processes. `threads`: torch's
    CPU threads per process (default: the cores shared among the jobs). CPU kernels sum in an order that
    depends on the thread count, so runs agree bit for bit at the same `threads`, whatever `jobs` is.
    """
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: expected 1 or more worker processes")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: expected 1 or more CPU threads per process")
    threads = threads or default_threads(jobs)
    if distributed.launched_world_size() > 1:
        raise InputError("compare runs whole cells per process: use --jobs N instead of torchrun "
                         "(torchrun is for one long training: train or mitigate)")
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, {**settings.model_dump(), "run": {**run_info(), "device": str(dev), "jobs": jobs,
                                                         "threads": threads}})
    deadline = None if time_limit_min is None else time.time() + 60 * time_limit_min
    with run_logging(out, COMPARE_LOG):
        if jobs > 1:
            counts = run_blocks(settings, root, out, only, deadline, quiet, str(dev), jobs, threads)
        else:
            torch.set_num_threads(threads)
            counts = run_cells(settings, root, out, only, deadline, quiet, dev, table_every_s)
        write_tables(settings, out)
        write_reports(out)  # report.html / report.md with the trade-off plot across methods
    return counts
