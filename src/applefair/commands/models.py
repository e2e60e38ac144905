"""`applefair models list` and `applefair models sites NAME`."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import Field
from rich.console import Console
from rich.table import Table

from applefair.engine.config import Settings

out_console = Console()
models_app = typer.Typer(no_args_is_help=True, help="The segmentor zoo and its latent sites.")


@models_app.command("list")
def list_cmd(
    no_cache: bool = typer.Option(False, "--no-cache", help="Describe every model afresh (and do not store it)."),
) -> None:
    """List the segmentors and presets that `--model NAME` accepts: parameters, the latent shape at the
    default site for the model's input size, and the tiny (CPU-test) arguments.

    Shapes are traced on the `meta` device (no weights, no arithmetic); the descriptions are cached
    per user until the models, their code or the libraries change. Builders that need arguments
    (imported nnU-Net, MONAI bundle, own module) show '-': `models sites FOLDER` describes a folder.

    Example: applefair models list
    """
    from applefair.models.describe import describe_zoo
    from applefair.models.registry import list_models, model_info

    table = Table(title="Segmentor zoo (presets name arguments of a model)")
    table.add_column("name", no_wrap=True)  # names are typed back: never broken
    for col in ("what", "params", "input", "latent (default site)", "--tiny arguments"):
        table.add_column(col, overflow="fold")
    described = describe_zoo(cache=not no_cache)
    for name in list_models():
        info, d = model_info(name), described[name]
        what = info["summary"]
        if "preset_of" in info:
            what = f"{info['preset_of']} " + " ".join(f"{k}={v}" for k, v in info["args"].items()) + f": {what}"
        tiny = ", ".join(f"{k}={v}" for k, v in info["tiny"].items())
        if "error" in d:  # needs arguments (an importer's builder): described by its model folder
            table.add_row(name, what, "-", "-", "-", tiny)
            continue
        unit = "vox" if len(d["latent_shape"]) == 4 else "px"  # (C, D, H, W): a 3-D model, sides in voxels
        table.add_row(name, what, format_params(d["params"]), f"{d['size']} {unit}",
                      "x".join(map(str, d["latent_shape"])), tiny)
    out_console.print(table)


def format_params(n: int) -> str:
    """12345678 -> '12.3 M'."""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


class SitesSettings(Settings):
    """Settings of `applefair models sites` (YAML keys for --config)."""

    tiny: bool = False
    size: int = Field(64, ge=8)
    args: dict = Field(default_factory=dict)
    all: bool = False


@models_app.command("sites")
def sites_cmd(
    name: str = typer.Argument(..., help="A zoo name (see `applefair models list`) or a model folder."),
    tiny: bool = typer.Option(None, "--tiny/--no-tiny", help="The CPU-test size of the model (default: no)."),
    size: int = typer.Option(None, "--size", help="Side of the example image (px) used to measure output shapes "
                                                  "(default 64)."),
    arg: list[str] = typer.Option([], "--arg", help="Model argument KEY=VALUE (repeatable), e.g. variant=vit_b."),
    show_all: bool = typer.Option(None, "--all/--declared", help="List every module with a tensor output, not only "
                                                                 "the declared sites and the top two levels."),
    config: Path = typer.Option(None, "--config", help="YAML settings (tiny, size, args, all); options given here "
                                                       "override the file."),
) -> None:
    """List latent sites (module paths) with the output shape each has for a SIZE x SIZE image.

    The default site (where APPLE perturbs unless told otherwise) and the skip sites are marked.
    Any listed path can be given as a site; a module called several times per forward is a poor site.

    Example: applefair models sites unet --tiny --size 64
    """
    from applefair.engine.config import resolve_settings
    from applefair.workflows.train import parse_model_args

    st = resolve_settings(SitesSettings, config, tiny=tiny, size=size, all=show_all)
    tiny, size, show_all = st.tiny, st.size, st.all
    from applefair.models.registry import create_segmentor, is_model_folder, load_model_dir
    from applefair.models.sites import list_sites

    if is_model_folder(name):
        net, spec = load_model_dir(name)
    else:
        net, spec = create_segmentor(name, tiny=tiny, **{**st.args, **parse_model_args(arg)})
    from applefair.models.importing import example_input

    example = example_input(spec, size)
    infos = list_sites(net, example, spec.site, spec.skip_sites)
    if not show_all:
        infos = [s for s in infos if s.role or (len(s.shape) == 4 and s.name.count(".") <= 1)]
    shape = "x".join(map(str, example.shape[2:]))
    table = Table(title=f"Latent sites of {spec.name} for a {shape} {'volume' if spec.spatial_dims == 3 else 'image'}")
    table.add_column("site", overflow="fold")
    for col in ("module", "output shape", "role", "calls"):
        table.add_column(col)
    for s in infos:
        table.add_row(s.name, s.module, "x".join(map(str, s.shape)), s.role, str(s.calls) if s.calls > 1 else "")
    out_console.print(table)
    out_console.print(f"default site: {spec.site}; skip sites: {', '.join(spec.skip_sites) or 'none'}")


import_app = typer.Typer(no_args_is_help=True, help="Turn a deployed model (nnU-Net, MONAI bundle, your own module) "
                                                   "into a model folder.")
models_app.add_typer(import_app, name="import")


def _range(value: str | None) -> list[float] | None:
    """--input-range LO,HI -> [LO, HI]."""
    from applefair.errors import InputError

    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"--input-range '{value}': expected LO,HI (e.g. -1000,1000)") from None
    if not lo < hi:
        raise InputError(f"--input-range '{value}': expected LO < HI")
    return [lo, hi]


_RANGE_HELP = ("Intensities the model was trained on, LO,HI: applefair's [0, 1] images are mapped to LO + x*(HI-LO) "
               "before the model's own normalisation (e.g. -1000,1000 for CT; not needed for z-score).")


def _done(out: Path, spec) -> None:
    out_console.print(f"Model folder: {out}  ({spec.name}, head {spec.head}, {spec.in_channels} channel(s), "
                      f"{spec.spatial_dims}-D)")
    out_console.print(f"default site: {spec.site}; skip sites: {', '.join(spec.skip_sites) or 'none'}")


@import_app.command("nnunet")
def import_nnunet_cmd(
    results: Path = typer.Argument(..., help="nnU-Net v2 results folder (plans.json, dataset.json, fold_K/)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    configuration: str = typer.Option("2d", "--configuration", "-c", help="Plans configuration: 2d or 3d_fullres."),
    fold: str = typer.Option("0", "--fold", "-f", help="Fold whose checkpoint to import (0-4 or all)."),
    checkpoint: str = typer.Option("checkpoint_final.pth", "--checkpoint", help="Checkpoint file name in fold_K/."),
    input_range: str = typer.Option(None, "--input-range", help=_RANGE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder at --out."),
) -> None:
    """Import a trained nnU-Net v2 model: its network from the plans, its normalisation, its weights.

    The checkpoint is read with torch.load(weights_only=True). Sites: every encoder stage (the last is
    the bottleneck, the default site).

    Example: applefair models import nnunet RESULTS/nnUNetTrainer__nnUNetPlans__2d --fold 0 --out models/nnunet
    """
    from applefair.models.nnunet import import_nnunet

    spec = import_nnunet(results, out, configuration, fold, checkpoint, _range(input_range), overwrite)
    _done(out, spec)


@import_app.command("bundle")
def import_bundle_cmd(
    bundle: Path = typer.Argument(..., help="MONAI bundle folder (configs/inference.json|yaml, models/model.pt)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    weights: Path = typer.Option(None, "--weights", help="Weights file (default models/model.safetensors or .pt)."),
    input_range: str = typer.Option(None, "--input-range", help=_RANGE_HELP),
    site: str = typer.Option("", "--site", help="Default latent site (default: known for MONAI U-Nets, else guessed)."),
    skip_site: list[str] = typer.Option([], "--skip-site", help="A skip site (repeatable)."),
    head: str = typer.Option(None, "--head", help="sigmoid or softmax (default: from the bundle's outputs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder at --out."),
) -> None:
    """Import a MONAI bundle: network_def (MONAI networks only), weights (weights-only), intensity preprocessing.

    Example: applefair models import bundle spleen_ct_segmentation --input-range -1000,1000 --out models/spleen
    """
    from applefair.models.bundle import import_bundle

    spec, skipped = import_bundle(bundle, out, weights, _range(input_range), site, skip_site, head, overwrite)
    _done(out, spec)
    steps = [s["transform"] for s in spec.args.get("preprocessing", [])]
    out_console.print(f"preprocessing applied: {', '.join(steps) or 'none'}")
    if skipped:
        out_console.print(f"[yellow]not applied[/yellow] (give images already prepared): {', '.join(skipped)}")


@import_app.command("module")
def import_module_cmd(
    model_class: str = typer.Option(..., "--model-class", help="Your nn.Module class, package.module:Class "
                                                                "(imported: this runs your code)."),
    weights: Path = typer.Option(..., "--weights", help="State dict: .safetensors, or .pt/.pth (read weights-only)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write."),
    arg: list[str] = typer.Option([], "--arg", help="Constructor keyword argument KEY=VALUE (repeatable; YAML value)."),
    site: str = typer.Option("", "--site", help="Default latent site (default: guessed, the deepest feature map)."),
    skip_site: list[str] = typer.Option([], "--skip-site", help="A skip site (repeatable)."),
    head: str = typer.Option(None, "--head", help="sigmoid or softmax (default: 1 output channel = sigmoid)."),
    in_channels: int = typer.Option(1, "--in-channels", help="Input channels the module takes."),
    spatial_dims: int = typer.Option(2, "--spatial-dims", help="2 (images) or 3 (volumes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder at --out."),
) -> None:
    """Import your own PyTorch module class plus a weights-only state dict.

    The class must map (B, C, H, W) images in [0, 1] to logits at the same size and stay importable
    (installed or on PYTHONPATH) wherever the folder is used.

    Example: applefair models import module --model-class mypkg.nets:MyUNet --arg width=16 --weights w.pt --out m
    """
    from applefair.data.formats import parse_key_values
    from applefair.models.custom import import_module

    kwargs = parse_key_values(arg, "--arg", "width=16 or channels=[16,32]")
    spec = import_module(model_class, weights, out, kwargs, site, skip_site, head, in_channels, spatial_dims,
                         overwrite)
    _done(out, spec)
    if not site:
        out_console.print("the default site was guessed; list the others with `applefair models sites "
                          f"{out} --all` and choose one with --site")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
