"""The `tms` command: one small dispatcher to the sweep service and the analysis.

    tms sweep experiment=intro data.density=1.0,0.2,0.05 sweep.seeds=3
    tms sweep --dry-run experiment=phase_n2m1
    tms submit --address http://127.0.0.1:8265 --wait experiment=intro store=/shared/runs
    tms status runs/intro
    tms analyze runs/intro [--out DIR] [--wandb MODE] …

Nothing heavy is imported before a command has read its arguments: `tms --help`, `tms sweep
--help` and bad input answer without loading torch, Ray or W&B. Bad input prints one line
("error: key: what is allowed") and exits 2, creating nothing.
"""

import sys

from sweeps.errors import UsageError, exit_status

USAGE = """usage: tms sweep [--dry-run] OVERRIDE...
       tms submit --address URL [--wait] OVERRIDE...
       tms status SWEEP_DIR
       tms analyze SWEEP_DIR [--out DIR] [--wandb MODE] ...   (tms analyze --help for all options)

OVERRIDE is Hydra syntax: key=value, group=choice, and grids key=a,b,c | range(a,b[,step]) |
choice(...) | linspace(a,b,n) | geomspace(a,b,n) | logspace(a,b,n). See docs/sweeps.md."""

COMMANDS = ("sweep", "submit", "status", "analyze")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    return exit_status(lambda: dispatch(argv[0], argv[1:]))


def dispatch(command: str, rest: list[str]) -> int:
    if command == "sweep":
        from sweeps.cli import sweep
        return sweep(rest, USAGE)
    if command == "submit":
        from sweeps.cli import submit
        return submit(rest)
    if command == "status":
        from sweeps.status import status
        return status(rest)
    if command == "analyze":
        return analyze(rest)
    raise UsageError(f"command: unknown {command!r}; allowed: {', '.join(COMMANDS)}")


def analyze(args: list[str]) -> int:
    """`tms analyze`: the analysis (analysis.cli), then its figures and tables to W&B when wanted."""
    from analysis import cli as analysis_cli

    parser = analysis_cli.build_parser()
    parser.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default="auto",
                        help="log the outputs as a W&B run in the sweep's group: auto = as the sweep did "
                             "(its config.yaml), disabled = not at all (default %(default)s)")
    rc, opts, result = analysis_cli.run(parser, args)
    if rc != 0 or result is None:
        return rc
    from sweeps.tracking import log_analysis_run

    log_analysis_run(opts.sweep_dir, result.out_dir, opts.wandb)
    return 0
