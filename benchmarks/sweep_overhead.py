"""What the sweep service costs on top of the trainer, measured side by side in one run.

    python -m benchmarks.sweep_overhead --json            # the issue's 2,000 points x 2,000 steps
    python -m benchmarks.sweep_overhead --points 200 --steps 500 --subset 20 --json   # quick look

1. pipeline: `tms sweep` end to end (Ray start, Tune trials, Parquet store, stop) on `--points`
   relu_out models (n=20, m=5), timed from launch to exit; the driver's peak RSS is sampled, and
   again on a sweep 10x smaller, to show it does not grow with points x steps (rows stream from
   the workers straight to Parquet).
2. trainer: `toymodels.train` on the same points, packed the same way, in this process.
3. one point per trial: `tms sweep sweep.points_per_trial=1` on the first `--subset` points,
   rate taken over its trial phase only (start of the first trial to end of the last), which
   flatters it; the ratio to the pipeline is therefore a lower bound.

Targets: pipeline >= 80 % of the trainer, >= 20x one point per trial. Prints ratios, not
verdicts; compare figures only within one run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _overrides(points: int, steps: int, name: str, store: str) -> list[str]:
    seeds = 20 if points % 20 == 0 else 1
    return [f"store={store}", f"sweep.name={name}", "model.kind=relu_out", "model.n_features=20", "model.n_hidden=5",
            "data.importance_decay=0.7", f"data.density=geomspace(1,0.001,{points // seeds})", f"sweep.seeds={seeds}",
            f"train.steps={steps}", "wandb.mode=disabled", f"sweep.max_points={max(points, 1)}"]


def _peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_tms(args: list[str]) -> dict:
    """Run `tms sweep ARGS`; wall seconds and the driver's peak RSS (sampled until it exits)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tms", "sweep", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"tms sweep failed ({proc.returncode}):\n{out}{err}")
    return {"seconds": time.perf_counter() - start, "driver_peak_rss_mb": round(peak, 1)}


def trial_phase_seconds(sweep_dir: Path) -> float:
    import pyarrow.parquet as pq

    done = pq.read_table(sweep_dir / "done").to_pandas()
    return (done.finished_at.max() - done.started_at.min()).total_seconds()


def bench_trainer(overrides: list[str]) -> dict:
    import toymodels
    from sweeps.plan import make_plan

    plan = make_plan(overrides)
    model_steps, start = 0, time.perf_counter()
    for trial in plan.trials():
        specs = [plan.spec(int(p)) for p in trial.points]
        toymodels.train(specs, device="cpu", callback=lambda ck: None)
        model_steps += sum(s.train.steps for s in specs)
    return {"seconds": time.perf_counter() - start, "model_steps": model_steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--subset", type=int, default=40, help="points run one per trial")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tms-bench-") as store:
        full = _overrides(args.points, args.steps, "pipeline", store)
        pipeline = run_tms(full)
        small_points = max(20, args.points // 10)
        small = run_tms(_overrides(small_points, args.steps, "small", store))
        trainer = bench_trainer(full)
        subset = _overrides(args.subset, args.steps, "one", store) + ["sweep.points_per_trial=1"]
        run_tms(subset)
        one_seconds = trial_phase_seconds(Path(store) / "one")

    model_steps = args.points * args.steps
    result = {
        "points": args.points, "steps": args.steps, "subset": args.subset, "cpus": os.cpu_count(),
        "pipeline_model_steps_per_s": round(model_steps / pipeline["seconds"], 1),
        "trainer_model_steps_per_s": round(trainer["model_steps"] / trainer["seconds"], 1),
        "one_per_trial_model_steps_per_s": round(args.subset * args.steps / one_seconds, 1),
        "pipeline_seconds": round(pipeline["seconds"], 2), "trainer_seconds": round(trainer["seconds"], 2),
        "one_per_trial_seconds": round(one_seconds, 2),
        "driver_peak_rss_mb": pipeline["driver_peak_rss_mb"],
        f"driver_peak_rss_mb_{small_points}_points": small["driver_peak_rss_mb"],
    }
    result["pipeline_vs_trainer"] = round(result["pipeline_model_steps_per_s"] / result["trainer_model_steps_per_s"], 3)
    result["pipeline_vs_one_per_trial"] = round(
        result["pipeline_model_steps_per_s"] / result["one_per_trial_model_steps_per_s"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
