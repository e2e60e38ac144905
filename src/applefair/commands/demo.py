"""`applefair demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out_console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder to write."),
    quick: bool = typer.Option(False, "--quick", help="Small, fast version (about a minute on 2 cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data, training and APPLE."),
    bias: str = typer.Option("contrast", "--bias", help="Bias mechanism of the synthetic data."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run APPLE end to end on the built-in synthetic benchmark.

    Example: applefair demo --quick --out runs/demo-quick
    """
    from applefair.demo import DemoConfig, run_demo
    from applefair.report.markdown import before_after_rows, verdict

    cfg = DemoConfig.quick(seed=seed, bias=bias) if quick else DemoConfig(seed=seed, bias=bias)
    result = run_demo(out, cfg, quiet=quiet)
    table = Table(title=f"Before vs after APPLE (test split, attribute '{result['before']['attribute']}')")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, b, a in before_after_rows(result["before"], result["after"]):
        table.add_row(label, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}")
    out_console.print(table)
    out_console.print(verdict(result["before"], result["after"]))
    chk = result["check"]
    out_console.print(f"Deployed weights unchanged: {'yes' if chk['unchanged'] else 'NO'} "
                      f"(sha256 {chk['hash_before'][:12]}…)")
    out_console.print(f"Report: {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
