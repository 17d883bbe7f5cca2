"""What the embedded local Ray costs every `tms sweep` on a laptop: start, and stop.

    python -m benchmarks.embedded_ray --json

Each repetition is a fresh process (as each `tms sweep` is) that starts Ray with
`sweeps.cluster.connect`, runs one task, and stops it two ways, alternated: the reference,
Ray's own `ray.shutdown()`, and `sweeps.cluster.stop_embedded()`, which the driver uses
(the autoscaler monitor stopped first; Ray 2.60 otherwise waits a second for it). Reports the
median seconds of each and their ratio; compare figures only within one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from sweeps.cluster import connect, stop_embedded
import ray
connect({"address": None, "host": "127.0.0.1", "num_cpus": 1, "num_gpus": 0})
ray.get(ray.remote(lambda: 1).remote())
t1 = time.perf_counter()
stop_embedded() if sys.argv[1] == "stop_embedded" else ray.shutdown()
print(json.dumps({"start": t1 - t0, "stop": time.perf_counter() - t1}))
"""


def _once(how: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, how], capture_output=True, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"{how}: exit {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per way of stopping")
    ap.add_argument("--json", action="store_true", help="one JSON line")
    args = ap.parse_args(argv)
    runs = {"ray.shutdown": [], "stop_embedded": []}
    for _ in range(args.repeat):
        for how in runs:
            runs[how].append(_once(how))
    med = {how: {k: round(statistics.median(r[k] for r in rs), 3) for k in ("start", "stop")}
           for how, rs in runs.items()}
    result = {"repeat": args.repeat, "median_seconds": med,
              "stop_ratio": round(med["stop_embedded"]["stop"] / med["ray.shutdown"]["stop"], 2)}
    if args.json:
        print(json.dumps(result))
    else:
        for how, m in med.items():
            print(f"{how:14s} start {m['start']:5.2f} s   stop {m['stop']:5.2f} s")
        print(f"stop_embedded / ray.shutdown: {result['stop_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
