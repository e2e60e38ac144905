"""`applefair mitigate`: fit a fairness patch (APPLE) for a deployed model, or run a baseline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from applefair.commands.evaluate import print_leakage, print_use

out_console = Console()


def mitigate(
    data: Path = typer.Option(..., "--data", help="Dataset: a manifest CSV or a folder holding manifest.csv."),
    model: Path = typer.Option(..., "--model", help="Deployed model folder (model.yaml + model.safetensors); "
                                                    "only read, never written."),
    attribute: list[str] = typer.Option([], "--attribute", "-a",
                                        help="Sensitive attribute or group spec ('sex', 'age:0,60,inf'); "
                                             "give it twice for the intersection."),
    groups: str | None = typer.Option(None, "--groups", help="Full group spec string or YAML file (replaces "
                                                             "--attribute)."),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    site: list[str] = typer.Option([], "--site", help="Latent site (dotted module path); repeat for several. "
                                                      "Default: the model's own site."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (overrides the config)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (overrides the config)."),
    restarts: int | None = typer.Option(None, "--restarts", help="APPLE: play the game this many times from other "
                                                               "initialisations and keep the best on validation "
                                                               "(overrides the config)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of APPLE options (see docs/method.md)."),
    method: str = typer.Option("apple", "--method", help="apple, or a baseline name from applefair.baselines."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    export: bool = typer.Option(False, "--export", help="Also export the mitigated model to TorchScript and ONNX."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: a GPU when there is one)."),
    probe: str = typer.Option("decoder", "--probe", help="Where the test split is probed and use is measured: "
                                                         "'decoder' (every decoder input) or 'patched' (the patched "
                                                         "site(s) only)."),
    use: bool = typer.Option(True, "--use/--no-use", help="Measure whether each model's output depends on the group "
                                                          "statistics of its decoder inputs (use.json)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a fairness patch for a frozen deployed segmentor (APPLE) and evaluate it.

    Writes patch.safetensors (attach with applefair.attach(model, path)), metrics.json and
    per_sample.csv (test), val/, deployed/ (test metrics of the unchanged model), leakage.json (three
    fresh probes at every decoder input), use.json (does each model use the group?), history.csv,
    curves.png, checkpoint.safetensors, frozen_check.json, config.yaml and run.log; prints the outcome.

    Example: cd runs/demo/misused_cue && applefair mitigate --data data --model deployed -a sex --out apple
    """
    from applefair.apple.config import load_apple_config
    from applefair.data.groups import build_group_spec
    from applefair.engine.runfolder import PATCH
    from applefair.workflows.mitigate import run_mitigation

    cfg, options = load_apple_config(config)
    cfg = cfg.replace(epochs=epochs, seed=seed, restarts=restarts, sites=list(site) if site else None)
    spec = build_group_spec(attribute, groups)
    result = run_mitigation(data, model, out, spec, cfg, method=method, method_options=options, resume=resume,
                            overwrite=overwrite, export=export, quiet=quiet, device=device, probe=probe, use=use)
    _print(result)
    out_console.print(f"Run folder: {out}" + (f"  patch: {out / PATCH}" if method == "apple" else ""))


def _print(result) -> None:
    after, before = result.test.frame, result.test.before_frame
    table = Table(title=f"Test split, attribute '{after.attribute}' ({result.method})")
    for col in ("metric", "deployed", "mitigated"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    table.add_row("overall Dice", f"{before.dice:.4f}", f"{after.dice:.4f}")
    for g in after.summary["groups"]:
        table.add_row(f"Dice {g}", f"{before.group(g):.4f}", f"{after.group(g):.4f}")
    for key, label in (("dice_delta", "Dice gap"), ("es_dice_sum", "ES-Dice (sum)")):
        if key in after.fairness:
            table.add_row(label, f"{before.fairness.get(key, float('nan')):.4f}", f"{after.fairness[key]:.4f}")
    out_console.print(table)
    print_leakage(result.test.leakage, out_console)
    print_use(result.test.use, out_console)
    if result.outcome is not None:
        out_console.print(result.outcome.sentence, highlight=False)
    from applefair.metrics.outcome import restarts_sentence

    games = restarts_sentence(result.check)
    if games:
        out_console.print(games, highlight=False)
    out_console.print(f"Deployed model unchanged: {'yes' if result.check['unchanged'] else 'NO'}")


def register(app: typer.Typer) -> None:
    app.command()(mitigate)
