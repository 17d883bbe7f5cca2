"""Throughput of the trainer against the notebook's loop, alternating in one process.

    python -m benchmarks.throughput --json

relu_out, n=20, m=5, batch 1024, importance 0.7^i, density 0.1, at 1, 10, 100 and 1,000
instances. Each round times, at every size in turn, the notebook loop, then our trainer with its
cache-sized blocks, then our trainer with the whole pack as one block (where that differs), each
compiled once beforehand (compilation excluded and reported separately); medians of the rounds
are reported, with the 1-minute load average of the machine at the end.
Timed runs keep the checkpoint density of a real run (one per ~200 steps); the selection loss
after training is not timed (benchmarks/selection_cost.py measures it) and kept small.

Per size it also reports: the fraction of the best size's speed in this run; the step's
activation traffic (:func:`toymodels.sizing.step_bytes` × model-steps/s — what the step would
move through main memory if nothing stayed in cache) beside the memory bandwidth measured by a
large copy in the same run; and the peak resident memory of the training loop above its
starting point, as a multiple of one step's activations for the whole pack.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

from benchmarks.notebook_reference import NotebookModel, optimize
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train
from toymodels.sizing import block_size, step_bytes
from toymodels.trainer import tune_allocator

N_FEATURES, N_HIDDEN, BATCH, DENSITY, DECAY = 20, 5, 1024, 0.1, 0.7
STEPS_PER_CHECKPOINT = 200


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's resident memory every 2 ms until :meth:`stop` or exit."""

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

    def stop(self):
        self._stop.set()

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def points(instances: int, steps: int) -> list[PointSpec]:
    cfg = TrainConfig(steps=steps, batch_size=BATCH, log_checkpoints=0, selection_rows=1024,
                      linear_checkpoints=max(1, round(steps / STEPS_PER_CHECKPOINT)))
    return [PointSpec(ModelConfig("relu_out", N_FEATURES, N_HIDDEN),
                      DataConfig(density=DENSITY, importance_decay=DECAY), cfg, seed=i)
            for i in range(instances)]


def time_ours(instances: int, steps: int, compile: bool, block: int | None) -> float:
    return train(points(instances, steps), compile=compile, block=block).model_steps_per_s


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


def copy_bandwidth(gib: float = 1.0) -> float:
    """Bytes per second read and written by copying a ``gib`` GiB float32 tensor (best of 3)."""
    a = torch.ones(int(gib * 2**30) // 4)
    b = torch.empty_like(a)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        b.copy_(a)
        best = max(best, 2 * a.numel() * 4 / (time.perf_counter() - t0))
    return best


def peak_memory(instances: int, compile: bool, block: int | None) -> float:
    """Peak RSS of a 20-step training loop above its starting point (the selection after it excluded)."""
    with PeakRSS() as mem:
        train(points(instances, 20), compile=compile, block=block,
              callback=lambda ck: mem.stop() if ck.final else None)
    return mem.peak - mem.base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="target seconds per timed run")
    ap.add_argument("--eager", action="store_true", help="time the trainer without compiling it")
    args = ap.parse_args()
    tune_allocator()
    compile = not args.eager
    per_instance = step_bytes("relu_out", N_FEATURES, N_HIDDEN, BATCH)
    bandwidth = copy_bandwidth()
    setup = {}
    for instances in args.instances:          # compile every shape and size every timed run first
        block = block_size(instances, per_instance, torch.device("cpu"), compile)
        variants = {"blocked": block} if block == instances else {"blocked": block, "one_block": instances}
        t0 = time.perf_counter()
        warm = train(points(instances, 3), compile=compile)  # compiles for this shape
        compile_s = time.perf_counter() - t0
        for b in variants.values():
            train(points(instances, 3), compile=compile, block=b)
        # Size each timed run to take about --seconds, from a warmed-up probe of each side.
        steps = {name: _steps_for(lambda k, b=b: time_ours(instances, k, compile, b), instances, args.seconds)
                 for name, b in variants.items()}
        ref_steps = _steps_for(lambda k: time_reference(instances, k), instances, args.seconds)
        setup[instances] = (block, variants, steps, ref_steps, warm.compiled, compile_s)
    # Every round times every size, so that the sizes compared by fraction_of_best share the
    # machine's load (other processes) alike.
    ours = {i: {name: [] for name in setup[i][1]} for i in args.instances}
    ref = {i: [] for i in args.instances}
    for _ in range(args.rounds):
        for instances in args.instances:
            block, variants, steps, ref_steps, _, _ = setup[instances]
            ref[instances].append(time_reference(instances, ref_steps))
            for name, b in variants.items():
                ours[instances][name].append(time_ours(instances, steps[name], compile, b))
    rows = []
    for instances in args.instances:
        block, variants, steps, ref_steps, compiled, compile_s = setup[instances]
        rate = {name: statistics.median(v) for name, v in ours[instances].items()}
        reference = statistics.median(ref[instances])
        peak = peak_memory(instances, compile, block)
        rows.append({
            "instances": instances,
            "block": block,
            "tms_model_steps_per_s": round(rate["blocked"], 1),
            "reference_model_steps_per_s": round(reference, 1),
            "ratio": round(rate["blocked"] / reference, 2),
            "one_block_model_steps_per_s": round(rate.get("one_block", rate["blocked"]), 1),
            "compiled": compiled,
            "compile_s": round(compile_s, 2),
            "activation_traffic_gb_s": round(per_instance * rate["blocked"] / 1e9, 2),
            "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "peak_rss_mb": round(peak / 2**20, 1),
            "step_tensors_mb": round(instances * per_instance / 2**20, 1),
            "peak_over_step_tensors": round(peak / (instances * per_instance), 2),
            "threads": torch.get_num_threads(),
            "load_average": round(os.getloadavg()[0], 2),
        })
    best = max(r["tms_model_steps_per_s"] for r in rows)
    for row in rows:
        row["fraction_of_best"] = round(row["tms_model_steps_per_s"] / best, 3)
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
