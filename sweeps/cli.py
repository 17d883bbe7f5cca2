"""The `tms` command: sweep, submit, analyze.

    tms sweep experiment=intro data.density=1.0,0.2,0.05 sweep.seeds=3
    tms sweep --dry-run experiment=phase_n2m1
    tms submit --address http://127.0.0.1:8265 --wait experiment=intro store=/shared/runs
    tms analyze runs/intro [--out DIR] …

Bad input prints one line ("error: key: what is allowed") and exits 2, creating nothing.
"""

import argparse
import os
import sys

from sweeps.schema import UsageError

USAGE = """usage: tms sweep [--dry-run] OVERRIDE...
       tms submit --address URL [--wait] OVERRIDE...
       tms analyze SWEEP_DIR [--out DIR] ...

OVERRIDE is Hydra syntax: key=value, group=choice, and grids key=a,b,c | range(a,b[,step]) |
choice(...) | linspace(a,b,n) | geomspace(a,b,n) | logspace(a,b,n). See docs/sweeps.md."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "sweep":
            return sweep(rest)
        if command == "submit":
            return submit(rest)
        if command == "analyze":
            return analyze(rest)
        raise UsageError(f"command: unknown {command!r}; allowed: sweep, submit, analyze")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tms sweep --dry-run … | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _overrides(args: list[str]) -> list[str]:
    for a in args:
        if a.startswith("-"):
            raise UsageError(f"{a}: unknown option; overrides look like key=value (see `tms --help`)")
        if "=" not in a and not a.startswith("~"):
            raise UsageError(f"{a}: not an override; write key=value (see `tms --help`)")
    return args


def sweep(args: list[str]) -> int:
    from sweeps.plan import conf_dir, make_plan

    if any(a in ("-h", "--help") for a in args):
        groups = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())
        print(USAGE + "\n\nconfig groups (group=choice):")
        for g in groups:
            print(f"  {g}: {', '.join(sorted(p.stem for p in (conf_dir() / g).glob('*.yaml')))}")
        return 0
    dry = "--dry-run" in args
    plan = make_plan(_overrides([a for a in args if a != "--dry-run"]))
    if dry:
        trials = plan.trials()
        axes = ", ".join(f"{k} ({len(v)})" for k, v in plan.axes.items()) or "none"
        print(f"sweep {plan.name}: {len(plan.points)} points = {len(plan.cells)} cells x "
              f"{plan.config['sweep']['seeds']} seeds in {len(trials)} trials; swept: {axes}; "
              f"store: {plan.config['store']}/{plan.name}")
        for k, v in plan.axes.items():
            print(f"  {k} = {v}")
        return 0
    from sweeps.run import run_sweep
    return run_sweep(plan)


def submit(args: list[str]) -> int:
    from sweeps.submit import submit as submit_job

    ap = argparse.ArgumentParser(prog="tms submit", add_help=True)
    ap.add_argument("--address", required=False, default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                    help="Ray dashboard / job server, e.g. http://head:8265")
    ap.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    opts, rest = ap.parse_known_args(args)
    if not opts.address:
        raise UsageError("--address: required (the cluster's job server, e.g. http://head:8265)")
    return submit_job(opts.address, _overrides(rest), opts.wait)


def analyze(args: list[str]) -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("sweep_dir", nargs="?")
    ap.add_argument("--out")
    known, _ = ap.parse_known_args(args)
    try:
        from analysis.cli import main as analysis_main
    except ImportError as exc:
        raise UsageError(f"analyze: the analysis package is not importable ({exc}); "
                         "install the project with `pip install -e .`") from None
    if known.sweep_dir and not any(a in ("-h", "--help") for a in args):
        if not os.path.isfile(os.path.join(known.sweep_dir, "sweep.json")):
            raise UsageError(f"SWEEP_DIR: {known.sweep_dir} is not a sweep directory (no sweep.json)")
    rc = analysis_main(args)
    if rc != 0 or not known.sweep_dir:
        return rc
    return _log_analysis(known.sweep_dir, known.out or os.path.join(known.sweep_dir, "analysis"))


def _log_analysis(sweep_dir: str, out_dir: str) -> int:
    """Log the analysis outputs to W&B when the sweep's own config has W&B on."""
    import yaml

    from sweeps import tracking

    path = os.path.join(sweep_dir, "config.yaml")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        config = yaml.safe_load(f)
    wandb_cfg = config.get("wandb") or {}
    if tracking.resolve_mode(wandb_cfg.get("mode", "disabled")) == "disabled":
        return 0
    wb = tracking.check(wandb_cfg, os.path.abspath(sweep_dir))
    name = (config.get("sweep") or {}).get("name") or os.path.basename(os.path.abspath(sweep_dir))
    try:
        n = tracking.log_analysis(wb, name, out_dir, {"sweep": name, "analysis_dir": os.path.abspath(out_dir)})
    except Exception as exc:  # noqa: BLE001 - the analysis itself is on disk; say what W&B refused
        print(f"error: W&B: logging the analysis failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"logged {n} analysis figures/tables to W&B ({wb['mode']}, group {name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
