"""`applefair train`: ERM-train a zoo segmentor (or import a checkpoint) into a model folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out_console = Console()


def train(
    out: Path = typer.Option(..., "--out", help="Model folder to write (model.safetensors + model.yaml)."),
    data: str = typer.Option(None, "--data", help="Dataset: a manifest CSV or a dataset folder "
                                                  "(needs train and val splits unless --epochs 0)."),
    model: str = typer.Option(None, "--model", help="Zoo name (see `applefair models list`)."),
    tiny: bool = typer.Option(None, "--tiny/--no-tiny", help="The CPU-test size of the model (default: no)."),
    arg: list[str] = typer.Option([], "--arg", help="Model argument KEY=VALUE (repeatable), e.g. variant=vit_b, "
                                                    "prompt=point, jitter=5, channels=[16,32,64,128]."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs; 0 only imports --checkpoint (default: 30)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per step (default: 16)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: 2e-3 for adamw, 1e-2 for sgd)."),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw or sgd (Nesterov, momentum 0.99), both with "
                                                            "polynomial decay (default: adamw)."),
    augment: str = typer.Option(None, "--augment", help="Comma list of hflip, vflip, rotate, intensity; or none "
                                                        "(default: hflip,rotate,intensity)."),
    seed: int = typer.Option(None, "--seed", help="Seed for initialisation, data order, augmentation (default: 0)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Initial weights: .safetensors, or a state dict "
                                                              ".pt/.pth (SAM/MedSAM too), loaded without pickle."),
    data_format: str = typer.Option(None, "--format", help="Dataset format (csv, fairseg, tusc, fives, nifti); "
                                                           "detected when omitted."),
    option: list[str] = typer.Option([], "--option", help="Reader option KEY=VALUE (repeatable)."),
    size: int = typer.Option(None, "--size", help="Resize every sample to SIZE x SIZE."),
    attribute: str = typer.Option(None, "--attribute", help="Group column, only to label validation rows."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda (default: auto)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (keys as in `TrainSettings`, docs/models.md); "
                                                       "options given here override the file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted (killed) run of --out from its "
                                                        "last epoch's checkpoint; the same options are required."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train the segmentor to be deployed by ERM (Dice + CE), keeping the best epoch on validation.

    Writes OUT/model.safetensors and OUT/model.yaml (load with applefair.models.load_model_dir),
    plus config.yaml, history.csv and run.log. With --epochs 0 and --checkpoint it only turns a
    checkpoint into a model folder. The folder is built in a hidden .OUT.resume.partial next to it,
    with a checkpoint after every epoch: after a kill, the same command with --resume continues
    and gives the same final weights as an uninterrupted run.

    Example: applefair train --data runs/demo/misused_cue/data --model unet --tiny --epochs 5 --out runs/unet-tiny
    """
    from applefair.data.formats import parse_options
    from applefair.engine.config import resolve_settings
    from applefair.workflows.train import TrainSettings, parse_model_args, run_train

    settings = resolve_settings(TrainSettings, config, data=data, format=data_format, size=size, attribute=attribute,
                                tiny=tiny, checkpoint=checkpoint, epochs=epochs, batch_size=batch_size,
                                lr=lr, optimizer=optimizer.strip().lower() if optimizer else None, augment=augment,
                                seed=seed, device=device, model=model)
    settings.args = {**settings.args, **parse_model_args(arg)}
    settings.options = {**settings.options, **parse_options(option)}
    result = run_train(settings, out, overwrite=overwrite, quiet=quiet, resume=resume)
    if result.history:
        best = max(result.history, key=lambda h: h["val_dice"])
        out_console.print(f"Best validation Dice {best['val_dice']:.4f} at epoch {best['epoch']} "
                          f"of {len(result.history)} ({result.seconds:.1f} s)")
    out_console.print(f"Model {result.spec.name} written to {out} (default site {result.spec.site})")


def register(app: typer.Typer) -> None:
    app.command()(train)
