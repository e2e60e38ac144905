"""`applefair report RUN_DIR`: (re)write report.html, report.md, tables/ and plots/ of any run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import Field
from rich.console import Console

from applefair.engine.config import Settings

out_console = Console()


class ReportSettings(Settings):
    """Settings of `applefair report` (for --config)."""

    overlays: bool = Field(True, description="Recompute example overlays from deployed/ + patch + data.")


def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by demo, evaluate, mitigate or compare."),
    overlays: bool = typer.Option(None, "--overlays/--no-overlays",
                                  help="Recompute example predictions for the overlay figure (default: on)."),
    config: Path = typer.Option(None, "--config", help="YAML file with the settings above (keys: overlays)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors."),
) -> None:
    """Write the run folder's report: one self-contained report.html, report.md, tables/*.csv, plots/*.

    Sections whose files are missing are left out, so this works for any run folder.

    Example: applefair report runs/demo
    """
    from applefair.engine import runfolder as rf
    from applefair.engine.config import resolve_settings
    from applefair.engine.logs import run_logging
    from applefair.errors import InputError
    from applefair.report.build import write_reports

    settings = resolve_settings(ReportSettings, config, overlays=overlays)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    if not rf.is_run_folder(run_dir):
        raise InputError(f"{run_dir}: not an applefair run folder (expected config.yaml or metrics.json in it)")
    try:
        with run_logging(run_dir, rf.REPORT_LOG):
            written = write_reports(run_dir, overlays=settings.overlays)
    except (PermissionError, IsADirectoryError) as exc:  # the user's folder, not a bug
        raise InputError(f"{exc.filename or run_dir}: cannot write the report ({exc.strerror})") from None
    if not quiet:
        out_console.print(f"Report: {written[rf.REPORT_HTML]}  ({len(written)} files written)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(report)
