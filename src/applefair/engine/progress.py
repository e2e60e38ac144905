"""Rich progress bars shared by every long loop (quiet mode turns them off), and a way to watch them.

Every trainer advances one bar per epoch (ERM, APPLE, each baseline's fine-tuning loop), so the
moments its bar moves are its epoch clock: `watch_progress` hands each advance to a callback, with
the bars on or off, which is how `applefair bench` times epochs of methods that take no callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ProgressEvent:
    """One advance of a bar: its description, how far it is (completed of total) and when (perf_counter)."""

    description: str
    completed: float
    total: float | None
    time: float


_listeners: list[Callable[[ProgressEvent], None]] = []


class _WatchedProgress(Progress):
    """A rich Progress that also tells the listeners of `watch_progress` when a bar advances."""

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        if _listeners and (kwargs.get("advance") or kwargs.get("completed") is not None):
            self._tell(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if _listeners:
            self._tell(task_id)

    def _tell(self, task_id) -> None:
        task = self._tasks[task_id]
        event = ProgressEvent(str(task.description), float(task.completed), task.total, time.perf_counter())
        for fn in list(_listeners):
            fn(event)


@contextmanager
def watch_progress(callback: Callable[[ProgressEvent], None]) -> Iterator[None]:
    """Inside, `callback(event)` runs whenever any progress bar of this process advances."""
    _listeners.append(callback)
    try:
        yield
    finally:
        _listeners.remove(callback)


def progress_bar(quiet: bool = False) -> Progress:
    from applefair.engine.distributed import is_main  # under torchrun, only rank 0 draws bars

    quiet = quiet or not is_main()
    return _WatchedProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), console=console, disable=quiet, transient=False)
