"""How fast `tms` answers when it has no work to do: help, status and bad input.

    python -m benchmarks.cli_latency --json

Each command runs --repeat times as a fresh process (as a user types it); the median wall
time is reported beside two references measured in the same run: a bare interpreter
(`python -c pass`) and `python -c "import torch"` (what every command paid before torch, Ray
and W&B were imported only when needed). Target: every line under 2 s on a loaded 2-core
machine; the ratios to `import torch` are the steadier figures.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _median_seconds(argv: list[str], repeat: int, expect: int | None) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if expect is not None and proc.returncode != expect:
            raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}, expected {expect}:\n{proc.stderr}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    py, tms = [sys.executable], [sys.executable, "-m", "tms"]
    with tempfile.TemporaryDirectory(prefix="tms-bench-") as tmp:
        store = Path(tmp) / "store"
        a_file = Path(tmp) / "a-file"
        a_file.write_text("")
        cases = {
            "python -c pass": (py + ["-c", "pass"], 0),
            "python -c 'import torch'": (py + ["-c", "import torch"], 0),
            "tms --help": (tms + ["--help"], 0),
            "tms sweep --help": (tms + ["sweep", "--help"], 0),
            "tms status --help": (tms + ["status", "--help"], 0),
            "tms sweep model.n_featurs=3": (tms + ["sweep", f"store={store}", "model.n_featurs=3"], 2),
            "tms sweep train.lr=inf": (tms + ["sweep", f"store={store}", "train.lr=inf"], 2),
            "tms sweep experiment=../x": (tms + ["sweep", f"store={store}", "experiment=../x"], 2),
            "tms sweep (10^7-value axis)": (tms + ["sweep", f"store={store}", "data.density=range(0,10000000)"], 2),
            "tms sweep store=<a file>": (tms + ["sweep", f"store={a_file}"], 2),
            "tms sweep store=foo://x": (tms + ["sweep", "store=foo://x"], 2),
            "tms sweep model.n_features=10^6": (tms + ["sweep", f"store={store}", "model.n_features=1000000"], 2),
            "tms status <not a sweep>": (tms + ["status", str(store)], 2),
            "tms analyze --help": (tms + ["analyze", "--help"], 0),
            "tms analyze <not a sweep>": (tms + ["analyze", str(store)], 2),
        }
        seconds = {name: _median_seconds(cmd, args.repeat, rc) for name, (cmd, rc) in cases.items()}
    torch_s = seconds["python -c 'import torch'"]
    result = {"repeat": args.repeat, "seconds": {k: round(v, 3) for k, v in seconds.items()},
              "vs_import_torch": {k: round(v / torch_s, 2) for k, v in seconds.items() if k.startswith("tms")},
              "slowest_tms_seconds": round(max(v for k, v in seconds.items() if k.startswith("tms")), 3)}
    if args.json:
        print(json.dumps(result))
    else:
        for name, s in seconds.items():
            ratio = f"{s / torch_s:5.2f}x import torch" if name.startswith("tms") else "reference"
            print(f"{name:36s} {s:6.3f} s   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
