"""Throughput of the trainer against the notebook's loop, alternating in one process.

    python -m benchmarks.throughput --json

relu_out, n=20, m=5, batch 1024, importance 0.7^i, density 0.1, at 1, 10, 100 and 1,000
instances. Each round times the notebook loop, then our trainer (compiled once beforehand,
compilation excluded and reported separately), and the median of the rounds is reported.
Also reports the trainer's peak memory above its starting point at each size, as a multiple
of the tensors one step needs (batch, hidden, output and output gradient).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train
from benchmarks.notebook_reference import NotebookModel, optimize

N_FEATURES, N_HIDDEN, BATCH, DENSITY, DECAY = 20, 5, 1024, 0.1, 0.7


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident memory every 2 ms while active."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def points(instances: int, steps: int) -> list[PointSpec]:
    cfg = TrainConfig(steps=steps, batch_size=BATCH, log_checkpoints=5, linear_checkpoints=2)
    return [PointSpec(ModelConfig("relu_out", N_FEATURES, N_HIDDEN),
                      DataConfig(density=DENSITY, importance_decay=DECAY), cfg, seed=i)
            for i in range(instances)]


def time_ours(instances: int, steps: int, compile: bool) -> float:
    r = train(points(instances, steps), compile=compile)
    return instances * steps / r.seconds


def time_reference(instances: int, steps: int) -> float:
    importance = (DECAY ** torch.arange(N_FEATURES)).expand(instances, N_FEATURES)
    model = NotebookModel(instances, N_FEATURES, N_HIDDEN, DENSITY, importance)
    t0 = time.perf_counter()
    optimize(model, n_batch=BATCH, steps=steps)
    return instances * steps / (time.perf_counter() - t0)


def _steps_for(timed, instances: int, seconds: float) -> int:
    """Steps that make one timed run last about ``seconds`` (probing with growing runs)."""
    steps = 10
    while True:
        rate = timed(steps)                       # model-steps/s
        elapsed = instances * steps / rate
        if elapsed >= seconds / 4:
            return max(steps, int(steps * seconds / elapsed))
        steps *= 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="target seconds per timed run")
    ap.add_argument("--eager", action="store_true", help="time the trainer without torch.compile")
    args = ap.parse_args()
    compile = not args.eager
    for instances in args.instances:
        t0 = time.perf_counter()
        warm = train(points(instances, 3), compile=compile)  # compiles for this shape
        compile_s = time.perf_counter() - t0
        # Size each timed run to take about --seconds, from a warmed-up probe of each side.
        ours_steps = _steps_for(lambda k: time_ours(instances, k, compile), instances, args.seconds)
        ref_steps = _steps_for(lambda k: time_reference(instances, k), instances, args.seconds)
        ours, ref = [], []
        for _ in range(args.rounds):
            ref.append(time_reference(instances, ref_steps))
            ours.append(time_ours(instances, ours_steps, compile))
        with PeakRSS() as mem:
            train(points(instances, 20), compile=compile)
        step_bytes = instances * BATCH * (3 * N_FEATURES + N_HIDDEN) * 4
        row = {
            "instances": instances,
            "tms_model_steps_per_s": round(statistics.median(ours), 1),
            "reference_model_steps_per_s": round(statistics.median(ref), 1),
            "ratio": round(statistics.median(ours) / statistics.median(ref), 2),
            "compiled": warm.compiled,
            "compile_s": round(compile_s, 2),
            "peak_rss_mb": round((mem.peak - mem.base) / 2**20, 1),
            "step_tensors_mb": round(step_bytes / 2**20, 1),
            "peak_over_step_tensors": round((mem.peak - mem.base) / step_bytes, 2),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
