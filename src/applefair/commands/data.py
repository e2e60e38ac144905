"""`applefair data inspect`: what a dataset holds, before any training."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from pydantic import Field
from rich.console import Console
from rich.table import Table

from applefair.engine.config import Settings

out_console = Console()
data_app = typer.Typer(help="Look at a dataset: counts per split and group, sizes, masks, unknown values.",
                       no_args_is_help=True)
_INTERNAL = {"id", "image", "mask", "image_path", "mask_path", "image_key", "mask_key", "slice", "axis", "split",
             "name", "volume", "imagePath", "labelPath"}


class InspectSettings(Settings):
    """Settings of `applefair data inspect` (YAML keys for --config)."""

    format: str | None = None
    groups: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    limit: int = Field(0, ge=0)


@data_app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="A manifest CSV or a dataset folder (FairSeg, TUSC, FIVES, NIfTI)."),
    fmt: str = typer.Option(None, "--format", help="csv, fairseg, tusc, fives or nifti (default: detected)."),
    groups: str = typer.Option(None, "--groups", help="Group spec to count, e.g. sex, 'age:0,60,inf' or "
                                                      "'sex*age:0,60,inf'."),
    option: list[str] = typer.Option([], "--option", help="Reader/loader option KEY=VALUE, repeatable "
                                                          "(e.g. target=disc, foreground=255)."),
    limit: int = typer.Option(None, "--limit", help="Open only the first N samples (default 0: all)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (format, groups, options, limit); options "
                                                       "given here override the file."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Print counts per split x group, image sizes, mask foreground statistics and unknown attribute values.

    Every sample is opened, so this also validates the dataset (exit code 2 on the first problem).

    Example: applefair data inspect data/vessels --groups "age:0,60,inf"
    """
    from applefair.data import GroupSpec, SmallGroupWarning, load_dataset, validate_samples
    from applefair.data.formats import parse_options
    from applefair.data.groups import _raw
    from applefair.engine.config import resolve_settings

    st = resolve_settings(InspectSettings, config, format=fmt or None, groups=groups or None, limit=limit)
    fmt, groups, limit = st.format, st.groups, st.limit
    frame = load_dataset(path, format=fmt or None, **{**st.options, **parse_options(option)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SmallGroupWarning)
        spec = GroupSpec.parse(groups).fit(frame) if groups else None
    stats = validate_samples(frame, spec, quiet=quiet, limit=limit or None)
    out_console.print(f"[bold]{path}[/bold]: format {frame.attrs.get('format')}, {len(frame)} samples"
                      + (f" ({len(stats)} opened)" if limit else ""))
    counts = spec.counts(frame) if spec else frame["split"].value_counts().to_frame("samples")
    table = Table(title="samples per split" + (f" x group of '{spec.attribute}'" if spec else ""))
    table.add_column("split")
    for c in counts.columns:
        table.add_column(str(c), justify="right")
    for split, row in counts.iterrows():
        table.add_row(str(split), *[str(int(v)) for v in row.tolist()])
    out_console.print(table)
    axes = ["depth", "height", "width"] if "depth" in stats.columns else ["height", "width"]
    sizes = stats.groupby(axes).size().sort_values(ascending=False)
    out_console.print(f"{'volume' if len(axes) == 3 else 'image'} sizes ({' x '.join(a[0].upper() for a in axes)}: "
                      "count): " + ", ".join(f"{'x'.join(map(str, k))}: {c}" for k, c in sizes.head(5).items())
                      + (f" and {len(sizes) - 5} more" if len(sizes) > 5 else ""))
    fg = stats["foreground"]
    out_console.print(f"mask foreground fraction: mean {fg.mean():.4f}, min {fg.min():.4f}, max {fg.max():.4f}; "
                      f"empty masks: {int((fg == 0).sum())}")
    attrs = Table(title="attributes")
    for c in ("column", "distinct known", "unknown", "examples"):
        attrs.add_column(c, justify="left" if c in ("column", "examples") else "right")
    for col in [c for c in frame.columns if c not in _INTERNAL]:
        vals = _raw(frame, col)
        known = sorted({v for v in vals if v is not None})
        attrs.add_row(col, str(len(known)), str(sum(v is None for v in vals)), ", ".join(known[:4])
                      + (", ..." if len(known) > 4 else ""))
    out_console.print(attrs)
    for w in caught:
        out_console.print(f"[yellow]warning:[/yellow] {w.message}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
