"""`applefair compare`: methods x segmentors x datasets x seeds, resumable, in the paper's table form."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out_console = Console()


def _split(text: str | None, cast=str) -> list:
    return [cast(t.strip()) for t in text.split(",") if t.strip()] if text else []


def compare(
    config: Path = typer.Option(..., "--config", help="Comparison YAML (see configs/smoke.yaml, configs/paper.yaml)."),
    out: Path = typer.Option(..., "--out", help="Run folder; an existing one is resumed (finished cells skipped)."),
    methods: str = typer.Option(None, "--methods", help="Run only these methods now (comma list)."),
    segmentors: str = typer.Option(None, "--segmentors", help="Run only these segmentors now (comma list)."),
    datasets: str = typer.Option(None, "--datasets", help="Run only these datasets now (comma list)."),
    seeds: str = typer.Option(None, "--seeds", help="Run only these seeds now (comma list)."),
    time_limit: float = typer.Option(None, "--time-limit", help="Start no new cell after this many minutes."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: a GPU when there is one)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes, each running one (seed, dataset, "
                                                   "segmentor) block at a time (they share the device)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads per process (default: the cores "
                                                        "shared among the jobs). Same threads, same numbers."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Compare APPLE with the mitigation baselines on every cell of a config.

    Every method starts from the same deployed model with the same budget. Cells are written
    atomically; rerunning the same command resumes. The tables (results.csv, summary.csv,
    results.md) list every cell of the config, finished or not, and are rewritten after each cell.

    Example: applefair compare --config configs/smoke.yaml --out runs/smoke
    """
    from applefair.engine.runfolder import RESULTS_MD
    from applefair.errors import InputError
    from applefair.workflows.compare.run import run_compare
    from applefair.workflows.compare.settings import load_compare_settings

    settings, root = load_compare_settings(config)
    try:
        only = {"methods": _split(methods), "segmentors": _split(segmentors), "datasets": _split(datasets),
                "seeds": _split(seeds, int)}
    except ValueError:
        raise InputError(f"--seeds: '{seeds}' (expected a comma list of integers)") from None
    counts = run_compare(settings, root, out, only, time_limit, quiet, device=device, jobs=jobs,
                         threads=threads)
    out_console.print(f"cells run {counts['run']}, already done {counts['skipped']}, failed {counts['failed']}, "
                      f"left for later {counts['left']}")
    out_console.print(f"Table: {out / RESULTS_MD}")


def register(app: typer.Typer) -> None:
    app.command()(compare)
