"""`applefair synth`: write the synthetic biased benchmark as a manifest folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from applefair.engine.config import Settings

out_console = Console()


class SynthSettings(Settings):
    """Settings of `applefair synth` (YAML keys for --config)."""

    n: int = 800
    size: int = 96
    bias: str = "contrast"
    minority_share: float = 0.25
    strength: float = 1.0
    seed: int = 0


def synth(
    kind: str = typer.Argument(..., help="nodules (ultrasound-like, attribute sex), vessels (fundus-like, "
                                         "attribute age in years) or nodules3d (3-D NIfTI volumes with their voxel "
                                         "spacing, attribute sex)."),
    out: Path = typer.Option(..., "--out", help="Folder to write (manifest.csv, images/, masks/)."),
    n: int = typer.Option(None, "--n", help="Number of images or volumes (default 800)."),
    size: int = typer.Option(None, "--size", help="Image side in pixels (default 96); nodules3d: voxels a side, "
                                                  "16-96 (e.g. 32)."),
    bias: str = typer.Option(None, "--bias", help="Bias mechanism: contrast (difficulty), gain, artifact, "
                                                  "anatomy, spurious, marker, texture (shortcut; the last three: a "
                                                  "group cue with a group-specific training-mask protocol), none "
                                                  "(control) "
                                                  "(default contrast)."),
    minority_share: float = typer.Option(None, "--minority-share", help="Share of the minority group, 0-1 "
                                                                        "(default 0.25)."),
    strength: float = typer.Option(None, "--strength", help="Size of the group difference, 0 = none (default 1)."),
    seed: int = typer.Option(None, "--seed", help="Seed; the same seed gives the same files (default 0)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (n, size, bias, minority_share, strength, "
                                                       "seed); options given here override the file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing, non-empty --out folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Write a synthetic benchmark with a known group bias (see docs/data.md).

    Example: applefair synth vessels --out data/vessels --n 800 --size 96 --bias anatomy --minority-share 0.25 --seed 0

    3-D: applefair synth nodules3d --out data/nodules3d --n 120 --size 32 --bias spurious --strength 1.5
    """
    from applefair.data.synthetic import BIASES, KINDS, generate
    from applefair.engine.config import resolve_settings
    from applefair.engine.io import staged_dir
    from applefair.engine.progress import progress_bar
    from applefair.engine.runfolder import MANIFEST
    from applefair.errors import InputError

    st = resolve_settings(SynthSettings, config, n=n, size=size, bias=bias, minority_share=minority_share,
                          strength=strength, seed=seed)
    n, size, bias, minority_share, strength, seed = (st.n, st.size, st.bias, st.minority_share, st.strength,
                                                     st.seed)

    if kind not in KINDS:  # checked before anything is written
        raise InputError(f"kind '{kind}' is not known (expected one of: {', '.join(KINDS)})")
    if bias not in BIASES:
        raise InputError(f"--bias '{bias}' is not known (expected one of: {', '.join(BIASES)})")
    with staged_dir(out, overwrite=overwrite) as stage, progress_bar(quiet) as bar:
        task = bar.add_task(f"synth {kind} ({bias})", total=n, info="")
        generate(stage, n=n, size=size, bias=bias, minority_share=minority_share, strength=strength, seed=seed,
                 kind=kind, on_image=lambda i: bar.update(task, completed=i + 1))
    what = "volumes" if kind == "nodules3d" else "images"
    out_console.print(f"Wrote {n} {kind} {what} ({bias} bias) to {out / MANIFEST}")


def register(app: typer.Typer) -> None:
    app.command()(synth)
