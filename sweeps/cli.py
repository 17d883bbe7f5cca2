"""`tms sweep` and `tms submit`: their arguments, then the plan, then the driver or the job.

The `tms` command itself is tms.cli; this module imports nothing heavy at import time.
"""

from __future__ import annotations

import argparse
import os

from sweeps.errors import UsageError


def overrides(args: list[str]) -> list[str]:
    """The arguments as Hydra overrides; anything else is a UsageError."""
    for a in args:
        if a.startswith("-"):
            raise UsageError(f"{a}: unknown option; overrides look like key=value (see `tms --help`)")
        if "=" not in a and not a.startswith("~"):
            raise UsageError(f"{a}: not an override; write key=value (see `tms --help`)")
    return args


def config_groups() -> str:
    """The config groups and their choices, one line each (from the config tree's files)."""
    from sweeps.grid import conf_dir, group_choices

    groups = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())
    return "\n".join(f"  {g}: {', '.join(group_choices(g))}" for g in groups)


def sweep(args: list[str], usage: str) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(usage + "\n\nconfig groups (group=choice):\n" + config_groups())
        return 0
    dry = "--dry-run" in args
    from sweeps.plan import make_plan

    plan = make_plan(overrides([a for a in args if a != "--dry-run"]))
    if dry:
        trials = plan.trials()
        axes = ", ".join(f"{k} ({len(v)})" for k, v in plan.axes.items()) or "none"
        print(f"sweep {plan.name}: {len(plan)} points = {len(plan.cell_ids)} cells x {plan.seeds} seeds in "
              f"{len(trials)} trials; swept: {axes}; store: {plan.config['store']}/{plan.name}")
        for k, v in plan.axes.items():
            shown = v if len(v) <= 20 else [*v[:10], "…", *v[-10:]]
            print(f"  {k} = {shown}")
        return 0
    from sweeps.driver import run_sweep

    return run_sweep(plan)


def submit(args: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tms submit", add_help=True)
    ap.add_argument("--address", required=False, default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                    help="Ray dashboard / job server, e.g. http://head:8265")
    ap.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    opts, rest = ap.parse_known_args(args)
    if not opts.address:
        raise UsageError("--address: required (the cluster's job server, e.g. http://head:8265)")
    from sweeps.submit import submit as submit_job

    return submit_job(opts.address, overrides(rest), opts.wait)
