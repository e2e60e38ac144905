"""`applefair demo`."""

from __future__ import annotations

from dataclasses import fields
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
    from applefair.engine.device import resolve_device
    from applefair.report.markdown import before_after_rows, verdict
    from applefair.workflows.demo import DemoConfig, DemoSettings, run_demo

    settings = resolve_settings(DemoSettings, config, quick=quick, seed=seed, bias=bias, device=device)
    resolved = str(resolve_device(settings.device))
    names = {f.name for f in fields(DemoConfig)}
    kw = {k: v for k, v in settings.model_dump().items() if k in names and v is not None}
    if "channels" in kw:
        kw["channels"] = tuple(kw["channels"])
    kw["device"] = resolved
    cfg = DemoConfig.quick(**kw) if settings.quick else DemoConfig(**kw)
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
    report = out / "report.html"
    out_console.print(f"Report: {report if report.exists() else out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
