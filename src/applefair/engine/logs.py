"""Logging of runs, and the crash log an internal error points to.

Each run folder gets ``run.log`` (`run_logging`). A run folder is built in a staging folder
that is removed when the run fails, so on an unexpected exception the command line writes a
separate crash log (traceback + the run's recent log lines) under `crash_log_dir()` and prints
its path: the user always has something to attach to a bug report.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = "applefair"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _RingHandler(logging.Handler):
    """Keeps the last log lines in memory so a crash log can include them."""

    def __init__(self, capacity: int = 500):
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_ring = _RingHandler()


def install_memory_log() -> None:
    """Attach the in-memory ring buffer to the applefair logger (idempotent)."""
    log = logging.getLogger(LOGGER)
    if _ring not in log.handlers:
        log.addHandler(_ring)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)


@contextmanager
def run_logging(folder: str | os.PathLike, name: str) -> Iterator[Path]:
    """Log the applefair logger's INFO messages to `folder/name` for the duration of a run."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    log = logging.getLogger(LOGGER)
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()


def crash_log_dir() -> Path:
    """$APPLEFAIR_LOG_DIR, else $XDG_CACHE_HOME/applefair/logs (~/.cache/applefair/logs), else a temp folder."""
    env = os.environ.get("APPLEFAIR_LOG_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(cache) / "applefair" / "logs"


def write_crash_log(exc: BaseException) -> Path:
    """Write the traceback, the command line and the recent log lines; returns the file's path."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    body = [f"applefair crash log {stamp}", f"command: {' '.join(sys.argv)}", f"cwd: {os.getcwd()}",
            f"python: {sys.version.split()[0]}"]
    try:
        from applefair._version import __version__

        body.append(f"applefair: {__version__}")
    except Exception:  # noqa: BLE001
        pass
    body += ["", "traceback:", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
             "recent log lines:", *list(_ring.lines), ""]
    text = "\n".join(body)
    for folder in (crash_log_dir(), Path(tempfile.gettempdir()) / "applefair-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{stamp}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    raise OSError("could not write a crash log anywhere")
