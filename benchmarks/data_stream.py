"""Cost of the data stream: today's step-keyed stream against the 32-bit counter it replaced.

    python -m benchmarks.data_stream --json

The stream was changed so that it never repeats (a 32-bit counter over (step, feature, row)
wrapped after 2³²/(n·B) steps). This times one training batch of each — the same hash, the
same layout, compiled with torch.compile as in the trainer — alternating in one process, at
n=20 (batch 1024, density 0.1) for 10, 100 and 1,000 instances, and reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from toymodels import rng
from toymodels.data import Structure, feature_batch
from toymodels.trainer import tune_allocator

N_FEATURES, BATCH, DENSITY = 20, 1024, 0.1


def counter_batch(keys: torch.Tensor, offset: torch.Tensor, density: torch.Tensor, n: int, batch: int) -> torch.Tensor:
    """The replaced stream: counter = step·n·B + feature·B + row as a wrapping int32."""
    counter = torch.arange(n * batch, dtype=torch.int32, device=keys.device).view(1, n, batch) + offset
    h = rng.lowbias32(rng.lowbias32(counter ^ keys[:, 0]) ^ keys[:, 1])
    u = ((h >> 8) & 0xFFFFFF).to(torch.float32) * (1.0 / 16777216.0)
    return torch.where(u < density, u / density, 0.0)


def timed(fn, steps: int) -> float:
    """Batches per second of ``fn(step)`` over ``steps`` consecutive steps."""
    t0 = time.perf_counter()
    for t in range(steps):
        fn(t)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--instances", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    tune_allocator()
    structure = Structure(N_FEATURES, False, "none", 0, 1, False)
    for instances in args.instances:
        keys = rng.keys_tensor(list(range(instances)), rng.STREAM_TRAIN)
        density = torch.full((instances, N_FEATURES, 1), DENSITY)
        new = torch.compile(lambda step: feature_batch(structure, keys, keys, step, density, BATCH), dynamic=False)
        old = torch.compile(lambda offset: counter_batch(keys, offset, density, N_FEATURES, BATCH), dynamic=False)
        run_new = lambda t: new(torch.tensor(t, dtype=torch.int32))  # noqa: E731
        run_old = lambda t: old(torch.tensor(rng._signed32(t * N_FEATURES * BATCH), dtype=torch.int32))  # noqa: E731
        run_new(0), run_old(0)  # compile both
        ours, ref = [], []
        for _ in range(args.rounds):
            ref.append(timed(run_old, args.steps))
            ours.append(timed(run_new, args.steps))
        row = {"instances": instances, "n_features": N_FEATURES, "batch": BATCH,
               "step_keyed_batches_per_s": round(statistics.median(ours), 1),
               "counter_batches_per_s": round(statistics.median(ref), 1),
               "ratio": round(statistics.median(ours) / statistics.median(ref), 3),
               "threads": torch.get_num_threads()}
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
