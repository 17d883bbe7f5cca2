"""Bad input, and how any error is shown to a user: one line."""

import os
import sys
from typing import Callable

LINE_LIMIT = 300


class UsageError(Exception):
    """Bad input: the message is one line naming the key and what is allowed (exit status 2)."""


def one_line(error: BaseException | str, last: bool = False) -> str:
    """One line of an exception or a text: its first non-empty line (the last with ``last``,
    e.g. the exception line of a traceback), whitespace collapsed, at most 300 characters.

    An exception with an empty message gives its type name.
    """
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else "unknown error"
    return (lines[-1] if last else lines[0])[:LINE_LIMIT]


def exit_status(command: Callable[[], int]) -> int:
    """Run a command and return its exit status: bad input is one line on stderr and 2,
    Ctrl-C is 130, and a reader that stops early (`… | head`) is not an error."""
    try:
        return command()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
