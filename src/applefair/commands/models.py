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
def list_cmd() -> None:
    """List the segmentors that `--model NAME` accepts, with their tiny (CPU-test) arguments.

    Example: applefair models list
    """
    from applefair.models.registry import list_models, model_info

    table = Table(title="Segmentor zoo")
    for col in ("name", "what", "--tiny arguments"):
        table.add_column(col)
    for name in list_models():
        info = model_info(name)
        table.add_row(name, info["summary"], ", ".join(f"{k}={v}" for k, v in info["tiny"].items()))
    out_console.print(table)


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
    import torch

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
    example = torch.rand(1, 1, size, size)
    infos = list_sites(net, example, spec.site, spec.skip_sites)
    if not show_all:
        infos = [s for s in infos if s.role or (len(s.shape) == 4 and s.name.count(".") <= 1)]
    table = Table(title=f"Latent sites of {spec.name} for a {size}x{size} image")
    table.add_column("site", overflow="fold")
    for col in ("module", "output shape", "role", "calls"):
        table.add_column(col)
    for s in infos:
        table.add_row(s.name, s.module, "x".join(map(str, s.shape)), s.role, str(s.calls) if s.calls > 1 else "")
    out_console.print(table)
    out_console.print(f"default site: {spec.site}; skip sites: {', '.join(spec.skip_sites) or 'none'}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
