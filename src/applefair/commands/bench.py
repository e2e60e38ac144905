"""`applefair bench`: APPLE's cost against retraining, inference overhead, scaling, evaluation speed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out_console = Console()


def _csv(text: str | None, option: str, kind: type) -> list | None:
    """'a,b,c' as a list of `kind` (None when the option was not given)."""
    if text is None:
        return None
    from applefair.errors import InputError

    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{option} {text}: expected comma-separated {kind.__name__} values") from None


def bench(
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for bench.json and bench.md."),
    quick: bool = typer.Option(None, "--quick/--full", help="Small sizes, about 1.5-3 minutes on 2 cores "
                                                            "(default: full)."),
    seed: int = typer.Option(None, "--seed", help="Seed for data and models (default 0)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (quick, seed); options given here override "
                                                       "the file."),
    device: str = typer.Option(None, "--device", help="auto (a GPU when there is one), cpu, cuda or cuda:N "
                                                       "(default auto)."),
    only: str = typer.Option(None, "--only", help="Comma-separated sections to measure: mitigation, inference, "
                                                  "dataset_size, image_size, evaluation, realistic, cache_memory, "
                                                  "cache_dtype (default: all; --quick: the first five)."),
    sizes: str = typer.Option(None, "--sizes", help="Comma-separated data-set sizes of the scaling rows "
                                                    "(default 1000,4000,16000; quick 256,512,1024)."),
    threads: int = typer.Option(None, "--threads", help="torch threads for every measurement (default 1; "
                                                        "recorded in bench.json)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Measure APPLE's cost against retraining baselines, its inference overhead, scaling and evaluation speed.

    Writes bench.json (mitigation_cost_ratio, inference_latency_ratio, params_ratio, scaling,
    evaluation, realistic, cache_memory, cache_dtype) and bench.md (the same as tables). A benchmark,
    not a test: numbers depend on the machine.

    Example: applefair bench --quick --out runs/bench-quick

    Example: applefair bench --only realistic --out runs/bench-realistic

    Example: applefair bench --only dataset_size --sizes 4000,16000 --out runs/bench-scaling
    """
    import sys

    from applefair.engine.config import resolve_settings
    from applefair.engine.device import resolve_device
    from applefair.engine.progress import console
    from applefair.workflows.bench import BenchSettings, run_bench
    from applefair.workflows.bench.run import check_out, write_bench
    from applefair.workflows.bench.tables import tables

    st = resolve_settings(BenchSettings, config, quick=quick, seed=seed, device=device,
                          only=_csv(only, "--only", str), dataset_sizes=_csv(sizes, "--sizes", int), threads=threads)
    cfg = st.bench_config(str(resolve_device(st.device)))
    check_out(out)

    def step(label: str) -> None:
        if not quiet:
            console.print(f"[bold]bench:[/bold] {label}")

    result = run_bench(cfg, quiet=True, step=step)
    command = "applefair " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("applefair") \
        else f"applefair bench{' --quick' if st.quick else ''} --out {out}"
    write_bench(out, result, command)
    for title, header, rows in tables(result):
        table = Table(title=title, title_justify="left")
        for h in header:
            table.add_column(h)
        for row in rows:
            table.add_row(*[str(c) for c in row])
        out_console.print(table)
    out_console.print(f"bench results written to {out} ({result['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command()(bench)
