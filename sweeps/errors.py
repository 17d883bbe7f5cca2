"""Bad input, and how any error is shown to a user: one line."""

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
