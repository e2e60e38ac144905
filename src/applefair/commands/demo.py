"""`applefair demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out_console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder to write."),
    quick: bool = typer.Option(None, "--quick", help="Small, fast version (about a minute on 2 cores)."),
    seed: int = typer.Option(None, "--seed", help="Seed for data, training and APPLE (default 0)."),
    bias: str = typer.Option(None, "--bias", help="Bias mechanism of the synthetic data (default contrast)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (keys as in `DemoSettings`, docs/cli.md); "
                                                       "options given here override the file."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda (default auto)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run APPLE end to end on the built-in synthetic benchmark.

    Writes the run folder: config.yaml, data/, deployed/, before/ and after/ metrics, patch.safetensors,
    leakage.json, frozen_check.json, history.csv, run.log, report.html, report.md, tables/, plots/.

    Example: applefair demo --quick --out runs/demo-quick
    """
    from applefair.engine.config import resolve_settings
    from applefair.engine.runfolder import REPORT_HTML, REPORT_MD
    from applefair.report.markdown import before_after_rows, verdict
    from applefair.workflows.demo import DemoSettings, run_demo

    settings = resolve_settings(DemoSettings, config, quick=quick, seed=seed, bias=bias, device=device)
    result = run_demo(out, settings, quiet=quiet)
    before, after = result.evaluation.before_frame.to_dict(), result.evaluation.frame.to_dict()
    table = Table(title=f"Before vs after APPLE (test split, attribute '{before['attribute']}')")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, b, a in before_after_rows(before, after):
        table.add_row(label, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}")
    out_console.print(table)
    out_console.print(verdict(before, after))
    chk = result.check
    out_console.print(f"Deployed weights unchanged: {'yes' if chk['unchanged'] else 'NO'} "
                      f"(sha256 {chk['hash_before'][:12]}…)")
    report = out / REPORT_HTML
    out_console.print(f"Report: {report if report.exists() else out / REPORT_MD}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
