"""How `tms analyze` scales: time and peak memory on a synthetic store of N feature rows.

    python -m benchmarks.analysis_scale                 # 5·10⁶ feature rows, a few minutes
    python -m benchmarks.analysis_scale --rows 100000000 --keep /data/bench

Builds a store laid out as docs/store.md describes (a density × extra-importance grid with
seeds; n features, m hidden, T checkpoints per point; trials of --points-per-trial points),
then runs the analysis entry point in a subprocess and measures its wall time and peak RSS
(resource.getrusage(RUSAGE_CHILDREN)). The reference measured in the same run is a plain
pyarrow scan of the same projected columns in another subprocess; results are reported as
ratios: peak RSS / store bytes, and analyze seconds / scan seconds. Prints one JSON line.

The values are synthetic (final weights from random tegum products of antipodal pairs and
dedicated features; series that approach them through a loss drop), so every stage runs:
phase table, events, geometry, energy table and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCAN = """
import sys, pyarrow.dataset as ds
root = sys.argv[1]
for kind, cols in (("metrics", ["point_id", "step", "loss", "d_star"]),
                   ("features", ["point_id", "step", "feature", "norm", "interference",
                                 "dimensionality", "importance", "density"])):
    data = ds.dataset(root + "/" + kind, format="parquet")
    rows = 0
    for batch in data.to_batches(columns=cols, batch_size=1 << 20):
        rows += batch.num_rows
    print(kind, rows)
"""


def _steps(total: int, count: int) -> np.ndarray:
    log = np.geomspace(1, total, max(count * 3 // 5, 2)).round().astype(np.int64)
    lin = np.linspace(0, total, max(count - len(log), 2)).round().astype(np.int64)
    return np.unique(np.concatenate([[0], log, lin, [total]]))


def _final_weights(rng: np.random.Generator, m: int, n: int, learned: int) -> np.ndarray:
    """A random tegum product: antipodal pairs and dedicated features, rotated; [m, n]."""
    W = np.zeros((m, n))
    col = row = 0
    while col < learned and row < m:
        if rng.random() < 0.6 and col + 1 < learned:
            W[row, col], W[row, col + 1] = 1.0, -1.0
            col += 2
        else:
            W[row, col] = 1.0
            col += 1
        row += 1
    q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    return q @ W + 0.01 * rng.normal(size=(m, n))


def _metrics(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    norm = np.linalg.norm(W, axis=0)
    live = norm >= 1e-3
    proj = (W / np.where(live, norm, 1)).T @ W
    sq = proj ** 2
    total = sq.sum(axis=1)
    return norm, np.where(live, total - np.diag(sq), 0), np.where(live, norm ** 2 / np.where(live, total, 1), 0)


def build_store(root: str, rows: int, n: int, m: int, checkpoints: int, per_trial: int, seeds: int,
                seed: int = 0) -> tuple[str, int, int]:
    """Write the synthetic store; return its sweep directory, points and feature rows."""
    rng = np.random.default_rng(seed)
    steps = _steps(5000, checkpoints)
    T = len(steps)
    points = max(seeds, rows // (n * T))
    cells = max(1, points // seeds)
    n_dens = max(1, min(20, int(np.sqrt(cells))))
    n_imp = max(1, cells // n_dens)
    densities = np.geomspace(1.0, 0.01, n_dens)
    importances = np.geomspace(0.1, 10, n_imp)
    sweep_dir = os.path.join(root, "scale")
    for sub in ("metrics", "features", "weights", "done"):
        os.makedirs(os.path.join(sweep_dir, sub), exist_ok=True)
    plan = []
    for i in range(points):
        c = (i // seeds) % (n_dens * n_imp)
        plan.append((f"{i:016x}", f"c{c:07d}", i % seeds, densities[c % n_dens], importances[c // n_dens]))
    logx = np.log10(np.maximum(steps, 1))
    f32 = pa.float32()
    point_rows = []
    for t0 in range(0, points, per_trial):
        pack = plan[t0:t0 + per_trial]
        key = f"trial{t0 // per_trial:06d}"
        P = len(pack)
        norm = np.empty((P, T, n), np.float32)
        inter = np.empty((P, T, n), np.float32)
        dim = np.empty((P, T, n), np.float32)
        loss = np.empty((P, T), np.float32)
        Ws = []
        for j, (_, _, _, dens, _) in enumerate(pack):
            learned = int(np.clip(round(m * (1 + 2 * (1 - dens))), 1, n))
            W = _final_weights(rng, m, n, learned)
            Ws.append(W)
            fn, fi, fd = _metrics(W)
            at = rng.uniform(1.5, 3.0)
            ramp = 1 / (1 + np.exp(-(logx - at) / 0.08))                      # [T]
            noise = 1 + 0.01 * rng.normal(size=(T, n))
            norm[j] = ramp[:, None] * fn * noise
            inter[j] = ramp[:, None] * fi
            dim[j] = np.where(norm[j] < 1e-3, 0, ramp[:, None] * fd)
            loss[j] = 10 ** (-1 - 0.5 * ramp) * (1 + 0.002 * rng.normal(size=T))
        ids = np.array([p[0] for p in pack], dtype=object)
        imp = np.ones((P, n), np.float32)
        imp[:, -1] = [p[4] for p in pack]
        dens = np.repeat(np.array([p[3] for p in pack], np.float32)[:, None], n, axis=1)
        frob = np.array([(W ** 2).sum() for W in Ws])
        pq.write_table(pa.table({
            "point_id": pa.array(np.repeat(ids, T), pa.string()),
            "step": pa.array(np.tile(steps, P), pa.int64()),
            "loss": pa.array(loss.ravel(), f32), "train_loss": pa.array(loss.ravel(), f32),
            "frob": pa.array(np.repeat(frob, T), f32), "d_star": pa.array(np.repeat(m / frob, T), f32),
            "lr": pa.array(np.full(P * T, 1e-3), f32)}),
            os.path.join(sweep_dir, "metrics", f"part-{key}.parquet"))
        pq.write_table(pa.table({
            "point_id": pa.array(np.repeat(ids, T * n), pa.string()),
            "step": pa.array(np.tile(np.repeat(steps, n), P), pa.int64()),
            "feature": pa.array(np.tile(np.arange(n, dtype=np.int32), P * T), pa.int32()),
            "norm": pa.array(norm.ravel(), f32), "interference": pa.array(inter.ravel(), f32),
            "dimensionality": pa.array(dim.ravel(), f32), "bias": pa.array(np.zeros(P * T * n), f32),
            "importance": pa.array(np.repeat(imp[:, None, :], T, axis=1).ravel(), f32),
            "density": pa.array(np.repeat(dens[:, None, :], T, axis=1).ravel(), f32)}),
            os.path.join(sweep_dir, "features", f"part-{key}.parquet"))
        pq.write_table(pa.table({
            "point_id": pa.array(ids, pa.string()), "n_hidden": pa.array([m] * P, pa.int32()),
            "n_features": pa.array([n] * P, pa.int32()),
            "W": pa.array([W.astype(np.float32).ravel() for W in Ws], pa.list_(f32)),
            "b": pa.array([np.zeros(n, np.float32)] * P, pa.list_(f32)),
            "W2": pa.array([None] * P, pa.list_(f32))}),
            os.path.join(sweep_dir, "weights", f"part-{key}.parquet"))
        pq.write_table(pa.table({"point_id": pa.array(ids, pa.string()), "status": pa.array(["done"] * P)}),
                       os.path.join(sweep_dir, "done", f"{key}.parquet"))
        for (pid, cell, s, d, r), lo in zip(pack, loss[:, -1]):
            point_rows.append({"point_id": pid, "trial_key": key, "status": "done", "seed": s,
                               "seed_index": s, "cell_id": cell, "final_loss": float(lo),
                               "model.kind": "relu_out", "model.n_features": n, "model.n_hidden": m,
                               "data.density": float(d), "data.extra_importance": float(r),
                               "train.steps": int(steps[-1])})
    pq.write_table(pa.Table.from_pylist(point_rows), os.path.join(sweep_dir, "points.parquet"))
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump({"name": "scale", "schema_version": 1,
                   "swept": ["data.density", "data.extra_importance"]}, f)
    return sweep_dir, points, points * T * n


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _child(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; return its wall seconds and the peak RSS in bytes of all children so far
    (ru_maxrss of RUSAGE_CHILDREN is a running maximum: the analysis runs first)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])}… failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.analysis_scale", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=5_000_000, help="feature rows in the store (default 5e6)")
    p.add_argument("--n-features", type=int, default=100, help="n (default 100)")
    p.add_argument("--n-hidden", type=int, default=20, help="m (default 20)")
    p.add_argument("--checkpoints", type=int, default=50, help="checkpoints per point (about; default 50)")
    p.add_argument("--points-per-trial", type=int, default=250, help="points per trial file (default 250)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell (default 5)")
    p.add_argument("--keep", metavar="DIR", help="build the store in DIR and keep it (default: a temp dir)")
    args = p.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="analysis-scale-")
    try:
        t0 = time.perf_counter()
        sweep_dir, points, rows = build_store(root, args.rows, args.n_features, args.n_hidden, args.checkpoints,
                                        args.points_per_trial, args.seeds)
        build_s = time.perf_counter() - t0
        store_bytes = _du(sweep_dir)
        out = os.path.join(root, "analysis-out")
        analyze_s, peak = _child([sys.executable, "-m", "analysis", sweep_dir, "--out", out, "--formats",
                                  "png", "--max-timelines", "4", "--quiet"])
        scan_s, _ = _child([sys.executable, "-c", SCAN, sweep_dir])
        print(json.dumps({
            "rows": rows, "points": points, "n_features": args.n_features, "n_hidden": args.n_hidden,
            "store_bytes": store_bytes, "build_seconds": round(build_s, 1),
            "analyze_seconds": round(analyze_s, 2), "peak_rss_bytes": peak,
            "peak_rss_over_store": round(peak / store_bytes, 3),
            "scan_seconds": round(scan_s, 2), "analyze_over_scan": round(analyze_s / scan_s, 2),
        }))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
