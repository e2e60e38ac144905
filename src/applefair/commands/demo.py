"""`applefair demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out_console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder to write."),
    quick: bool = typer.Option(None, "--quick", help="One seed per case, games of 15 epochs (under two minutes on "
                                                      "2 cores); the full demo runs three seeds with APPLE's shipped "
                                                      "defaults (about eight)."),
    seed: int = typer.Option(None, "--seed", help="Seed for data, training and APPLE (default 0; the first seed)."),
    seeds: int = typer.Option(None, "--seeds", help="Seeds per case: seed, seed + 1, ... (default: 1 with --quick, "
                                                    "3 for the SAM-like model's full demo)."),
    model: str = typer.Option(None, "--model", help="The deployed model: sam (tiny SAM-like, the default) or unet."),
    bias: str = typer.Option(None, "--bias", help="Run one case on this bias mechanism instead of the two cases "
                                                  "(misused cue: spurious; difficulty: contrast)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (keys as in `DemoSettings`, docs/cli.md); "
                                                       "options given here override the file."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda (default auto)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run APPLE end to end on the built-in synthetic benchmark: a misused cue and a difficulty-type gap, side by side.

    Writes the run folder: config.yaml, cases.json, report.html/md (both cases), run.log, and per case
    (misused_cue/, difficulty/): config.yaml, data/, deployed/, before/ and after/ metrics, patch.safetensors,
    paired.json, leakage.json, use.json, frozen_check.json, history.csv, run.log, report.html, report.md,
    tables/, plots/.

    Example: applefair demo --quick --out runs/demo-quick
    """
    from applefair.engine.config import resolve_settings
    from applefair.engine.runfolder import REPORT_HTML, REPORT_MD
    from applefair.metrics.outcome import explain_use, restarts_sentence
    from applefair.report.cases import seed_sentences
    from applefair.workflows.demo import DemoSettings, run_demo

    settings = resolve_settings(DemoSettings, config, quick=quick, seed=seed, seeds=seeds, model=model, bias=bias,
                                 device=device)
    result = run_demo(out, settings, quiet=quiet)
    table = Table(title="APPLE on the test split: before → after, in Dice points (gap change: paired 95% CI)")
    seeded = len({case.seed for case in result.cases}) > 1
    for col in ("case", *(("seed",) if seeded else ()), "Dice", "gap", "gap change", "outcome"):
        table.add_column(col, justify="left" if col in ("case", "outcome") else "right", no_wrap=True)
    for case in result.cases:
        b, a = case.before, case.after
        o = case.outcome
        ci = f" [{100 * o.change_ci[0]:+.1f}, {100 * o.change_ci[1]:+.1f}]" if o.change_ci else ""
        gap_b, gap_a = b["fairness"]["dice_delta"], a["fairness"]["dice_delta"]
        dice = f"{100 * b['overall']['dice']:.1f} → {100 * a['overall']['dice']:.1f}"
        table.add_row(case.case, *((str(case.seed),) if seeded else ()), dice,
                      f"{100 * gap_b:.1f} → {100 * gap_a:.1f}", f"{100 * (gap_a - gap_b):+.1f}{ci}", o.kind)
    out_console.print(table)
    for case in result.cases:
        out_console.print(f"[bold]{case.name}[/bold]: {case.title}.")
        explained = explain_use(case.use.get("deployed"))
        if explained:
            out_console.print(f"  {explained}")
        out_console.print(f"  {case.outcome.sentence}")
        games = restarts_sentence(case.check)
        if games:
            out_console.print(f"  {games}", highlight=False)
        out_console.print(f"  Deployed weights unchanged: {'yes' if case.check['unchanged'] else 'NO'} "
                          f"(sha256 {case.check['hash_before'][:12]}…)")
    for sentence in seed_sentences(result.records()):
        out_console.print(sentence, highlight=False)
    report = out / REPORT_HTML
    out_console.print(f"Report: {report if report.exists() else out / REPORT_MD}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
