"""Cost of the selection loss against the training it follows.

    python -m benchmarks.selection_cost --json

For each case, trains a pack for ``--steps`` steps (compiled as in a sweep), then times the
selection estimate alone on the trained weights, and reports it as a fraction of a 10,000-step
run of the same pack (training time scaled from the measured steps) with its relative
standard error. Cases: the intro model over densities 1 … 0.01 (n=5, the stratified path), the
basic model (n=20, m=5, density 0.1, 1,000 instances, plain path) and E5 (n=400, m=30).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train
from toymodels.data import Structure
from toymodels.streams import stream_keys
from toymodels.selection import selection
from toymodels.trainer import tune_allocator

CASES = {
    "intro n=5 m=2, 6 densities x 16 seeds": (
        "relu_out", 5, 2, [dict(density=d, importance_decay=0.9) for d in (1.0, 0.3, 0.1, 0.05, 0.02, 0.01)], 16),
    "basic n=20 m=5, density 0.1, 1000 instances": ("relu_out", 20, 5, [dict(density=0.1, importance_decay=0.7)], 1000),
    "E5 n=400 m=30, 4 densities": ("relu_out", 400, 30, [dict(density=d) for d in (0.3, 0.1, 0.03, 0.01)], 1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--steps", type=int, default=1000, help="training steps measured (scaled to 10,000)")
    args = ap.parse_args()
    tune_allocator()
    for name, (kind, n, m, datas, seeds) in CASES.items():
        points = [PointSpec(ModelConfig(kind, n, m), DataConfig(**d),
                            TrainConfig(steps=args.steps, log_checkpoints=2, linear_checkpoints=1), seed=s)
                  for d in datas for s in range(seeds)]
        result = train(points, compile=True)
        params = (torch.tensor(result.W), torch.tensor(result.b).unsqueeze(-1))
        keys, set_keys = stream_keys(points, "select")
        t0 = time.perf_counter()
        est = selection(kind, Structure.of(points[0]), params, torch.tensor(result.density),
                        torch.tensor(result.importance).unsqueeze(-1), None, keys, set_keys,
                        points[0].train.selection_rows)
        seconds = time.perf_counter() - t0
        train_10k = result.seconds * 10_000 / args.steps
        rel = (est.standard_error / est.loss).numpy()
        row = {"case": name, "instances": len(points), "selection_s": round(seconds, 2),
               "train_10k_steps_s": round(train_10k, 1), "fraction_of_10k_run": round(seconds / train_10k, 4),
               "max_relative_se": float(np.max(rel).round(5)), "median_relative_se": float(np.median(rel).round(5)),
               "threads": torch.get_num_threads()}
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
