"""`python -m sweeps sweep [--dry-run] OVERRIDE...`: the sweep command alone.

It is what `tms submit` runs on a cluster, which then needs only the toymodels and sweeps
packages; everywhere else use `tms sweep`.
"""

import sys

from sweeps.cli import sweep
from sweeps.errors import UsageError, exit_status

USAGE = "usage: python -m sweeps sweep [--dry-run] OVERRIDE...   (the same as `tms sweep`)"


def main(argv: list[str]) -> int:
    if argv[:1] != ["sweep"]:
        raise UsageError(f"command: python -m sweeps runs `sweep` only, got {' '.join(argv[:1]) or 'nothing'}")
    return sweep(argv[1:], USAGE)


sys.exit(exit_status(lambda: main(sys.argv[1:])))
