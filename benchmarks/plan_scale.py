"""Planning a million-point grid: `tms sweep --dry-run`, timed and its peak memory measured.

    python -m benchmarks.plan_scale --json
    python -m benchmarks.plan_scale --points 100000 --json     # a quick look

The grid is a phase diagram at high resolution (n=2, m=1): data.density × data.extra_importance,
each sqrt(points) values, one seed — the hardest shape for the planner (every point its own
cell). `tms sweep --dry-run` composes, counts, types, validates every cell, hashes every
point_id, packs the trials and prints the plan. Reference, in the same run: the floor of any
planner — building the same number of canonical settings strings and hashing them, in this
process. Target: 10^6 points in under 30 s and 1 GB (peak RSS of the tms process).
"""

import argparse
import hashlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time


def _floor_seconds(points: int) -> float:
    """Build and hash one canonical settings string per point: the least any planner does."""
    start = time.perf_counter()
    base = '{"data":{"density":%r,"extra_importance":%r},"model":{"n_features":2},"seed":0,"train":{"steps":10000}}'
    side = math.isqrt(points)
    for i in range(side):
        for j in range(side):
            hashlib.sha256((base % (i / side, j / side)).encode()).hexdigest()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    side = math.isqrt(args.points)
    points = side * side
    with tempfile.TemporaryDirectory(prefix="tms-bench-") as tmp:
        cmd = [sys.executable, "-m", "tms", "sweep", "--dry-run", f"store={tmp}", "model.n_features=2",
               "model.n_hidden=1", f"data.density=linspace(0.001,1,{side})",
               f"data.extra_importance=geomspace(0.1,10,{side})", f"sweep.max_points={points}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"tms sweep --dry-run failed ({proc.returncode}):\n{proc.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    floor = _floor_seconds(points)
    result = {"points": points, "plan_seconds": round(seconds, 2), "plan_peak_rss_mb": round(peak_mb, 1),
              "floor_seconds": round(floor, 2), "plan_vs_floor": round(seconds / floor, 2),
              "plan": proc.stdout.splitlines()[0]}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
