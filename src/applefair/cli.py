"""The `applefair` command line (typer).

Exit codes: 0 ok, 2 bad input (`InputError`: one line naming the file/row/key and what was
expected), 1 internal error (one line plus the path of a crash log with the traceback).
Commands live in `applefair.commands.<name>` and register themselves with `register(app)`.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer
from rich.console import Console

from applefair.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a deployed medical image segmentor fairer across patient groups "
                       "without retraining it (APPLE).")
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from applefair._version import __version__

        typer.echo(f"applefair {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """applefair: APPLE fairness patches for frozen segmentors.

    Exit codes: 0 ok, 2 bad input, 1 internal error (see docs/cli.md).
    """


def _register_commands() -> None:
    """Every module in `applefair.commands` adds its commands through `register(app)`."""
    import applefair.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"applefair.commands.{info.name}").register(app)


_register_commands()


def main() -> None:
    """Entry point: runs the app and turns exceptions into the documented exit codes."""
    from applefair.engine.logs import install_memory_log, write_crash_log

    install_memory_log()
    try:
        app(standalone_mode=True)
    except InputError as exc:
        from rich.markup import escape

        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line + crash log, exit 1
        from applefair.errors import EXIT_OUTPUT, as_output_error

        if isinstance(exc, OSError) and (full := as_output_error(exc)) is not None:  # disk full, permission, ...
            err_console.print(f"error: {full}", highlight=False, markup=False, soft_wrap=True)
            raise SystemExit(EXIT_OUTPUT) from None
        try:
            where = f"details in {write_crash_log(exc)}"
        except OSError:
            where = "no crash log could be written"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err_console.print(f"internal error: {type(exc).__name__}{': ' + msg if msg else ''} ({where})",
                          highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(EXIT_INTERNAL) from None


if __name__ == "__main__":
    main()
