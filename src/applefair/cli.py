"""The `applefair` command line (typer). Exit codes: 0 ok, 2 bad input, 1 internal error."""

from __future__ import annotations

import importlib
import pkgutil

import typer
from rich.console import Console

from applefair.errors import EXIT_BAD_INPUT, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a deployed medical image segmentor fairer across patient groups "
                       "without retraining it (APPLE).")
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """applefair: APPLE fairness patches for frozen segmentors."""


def _register_commands() -> None:
    """Every module in `applefair.commands` adds its commands through `register(app)`."""
    import applefair.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"applefair.commands.{info.name}").register(app)


_register_commands()


def main() -> None:
    try:
        app(standalone_mode=True)
    except InputError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(EXIT_BAD_INPUT) from None


if __name__ == "__main__":
    main()
