"""Sparse against dense inputs at many features: model-steps/s of each, alternating in one run.

    python -m benchmarks.sparse_inputs --json
    python -m benchmarks.sparse_inputs --json --largest     # also: peak memory at n=10⁵, m=10³

relu_out, n = 10⁴, density 10⁻³, batch 1024, m = 2 and m = 100. Each round trains the same
points with ``train.inputs=sparse`` and then ``dense`` (both compiled once beforehand,
compilation excluded); the medians of the rounds are reported, one JSON object per case.
``--largest`` trains one instance at n = 10⁵, m = 10³ for a few sparse steps, measures the peak
resident memory above the starting point, and reports how many such instances fit in this
machine's memory (at most half of it, as :func:`toymodels.sizing.choose_pack_size` allows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from benchmarks.throughput import PeakRSS
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train
from toymodels.trainer import tune_allocator

N_FEATURES, DENSITY, BATCH = 10_000, 1e-3, 1024


def points(n: int, m: int, instances: int, steps: int, inputs: str) -> list[PointSpec]:
    cfg = TrainConfig(steps=steps, batch_size=BATCH, inputs=inputs, log_checkpoints=0, linear_checkpoints=1,
                      eval_batch_size=BATCH, selection_rows=1024)
    return [PointSpec(ModelConfig("relu_out", n, m), DataConfig(density=DENSITY, importance_decay=0.999), cfg, seed=s)
            for s in range(instances)]


def rate(n: int, m: int, instances: int, steps: int, inputs: str, compile: bool) -> float:
    return train(points(n, m, instances, steps, inputs), compile=compile).model_steps_per_s


def largest() -> dict:
    """Peak memory of one sparse instance at n=10⁵, m=10³, and how many fit."""
    n, m = 100_000, 1_000
    with PeakRSS() as mem:
        train(points(n, m, 1, 2, "sparse"), compile=False,
              callback=lambda ck: mem.stop() if ck.final else None)
    peak = mem.peak - mem.base
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"n_features": n, "n_hidden": m, "density": DENSITY, "peak_rss_mb_per_instance": round(peak / 2**20, 1),
            "memory_gb": round(total / 2**30, 1), "instances_that_fit": int(0.5 * total // max(peak, 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--hidden", type=int, nargs="+", default=[2, 100])
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="time both paths without compiling them")
    ap.add_argument("--largest", action="store_true", help="also measure the n=10⁵, m=10³ case")
    args = ap.parse_args()
    tune_allocator()
    compile = not args.eager
    for m in args.hidden:
        for inputs in ("sparse", "dense"):                      # compile both shapes first
            rate(N_FEATURES, m, args.instances, 2, inputs, compile)
        timed = {"sparse": [], "dense": []}
        for _ in range(args.rounds):
            for inputs in timed:
                timed[inputs].append(rate(N_FEATURES, m, args.instances, args.steps, inputs, compile))
        sparse, dense = statistics.median(timed["sparse"]), statistics.median(timed["dense"])
        row = {"n_features": N_FEATURES, "n_hidden": m, "density": DENSITY, "instances": args.instances,
               "batch": BATCH, "compiled": compile, "sparse_model_steps_per_s": round(sparse, 1),
               "dense_model_steps_per_s": round(dense, 1), "ratio": round(sparse / dense, 2),
               "load_average": round(os.getloadavg()[0], 2)}
        print(json.dumps(row) if args.json else row, flush=True)
    if args.largest:
        row = largest()
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
