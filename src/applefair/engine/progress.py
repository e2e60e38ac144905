"""Rich progress bars shared by every long loop (quiet mode turns them off)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(quiet: bool = False) -> Progress:
    from applefair.engine.distributed import is_main  # under torchrun, only rank 0 draws bars

    quiet = quiet or not is_main()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, disable=quiet, transient=False)
