"""Error types that the command line turns into exit codes.

`InputError` means the user's input (a file, a column, a value, an option) is wrong:
the CLI prints its one-line message and exits with code 2, without a traceback.
`OutputError` means the operating system refused a write (disk full, permission denied,
read-only file system, quota): the CLI prints its one line, naming the file, and exits with
code 1 (the run failed, but not through a bug: no crash log is written, as the disk may be full).
Anything else is an internal error (exit code 1, with a crash log).
"""

from __future__ import annotations

import errno
import os
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class InputError(ValueError):
    """Bad user input. The message names the file/column/value and what was expected.

    The message is kept to one line: control characters (a newline inside a CSV cell, say) are
    shown escaped, as Python writes them in a string.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """`text` with control characters escaped (newline -> \\n), so that it prints as one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text.strip())


# what the OS says when a write cannot happen for reasons outside the program
STORAGE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS", "EFBIG")
                           if hasattr(errno, n))


# errors that only a write can meet (permission errors may come from a read too)
_WRITE_ONLY = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG") if hasattr(errno, n))


class OutputError(OSError):
    """A write the OS refused; `str()` is one line: ``cannot write FILE: no space left on device``."""

    def __init__(self, code: int, path: str | os.PathLike | None, verb: str = "write"):
        super().__init__(code, os.strerror(code), None if path is None else str(path))
        where = f" {path}" if path is not None else ""
        self.message = one_line(f"cannot {verb}{where}: {os.strerror(code).lower()}")

    def __str__(self) -> str:
        return self.message


def storage_errno(exc: BaseException | None) -> int | None:
    """The errno of a disk-full / permission / read-only error behind `exc` (its cause chain too), else None.

    Some writers (safetensors) wrap the OS error in their own type; its text carries the number.
    """
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc.errno
        m = re.search(r"(?:os error|code:)\s*(\d+)", str(exc), flags=re.IGNORECASE)
        if m and int(m.group(1)) in STORAGE_ERRNOS:
            return int(m.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def as_output_error(exc: BaseException, path: str | os.PathLike | None = None) -> OutputError | None:
    """`exc` as an OutputError naming `path` (or the file the OS named) if it is a storage error, else None.

    With `path`, the caller knows it was writing; without, a permission error says "cannot access".
    """
    if isinstance(exc, OutputError):
        return exc
    code = storage_errno(exc)
    if code is None:
        return None
    verb = "write" if path is not None or code in _WRITE_ONLY else "access"
    return OutputError(code, path if path is not None else getattr(exc, "filename", None), verb)


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 1  # the OS refused a write: the same code as a failed run, without a crash log
