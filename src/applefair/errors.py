"""Error types that the command line turns into exit codes.

`InputError` means the user's input (a file, a column, a value, an option) is wrong:
the CLI prints its one-line message and exits with code 2, without a traceback.
Anything else is an internal error (exit code 1).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input. The message names the file/column/value and what was expected."""


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
