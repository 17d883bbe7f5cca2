"""Synthetic stores and hand-built weights for the analysis tests.

Stores are written with pyarrow exactly as docs/store.md describes (part files per trial,
done markers, points.parquet, sweep.json). Per-checkpoint metrics are computed here from the
weights with numpy, independently of the analysis package.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------- geometries


def polygon(k: int) -> np.ndarray:
    """A regular k-gon of unit vectors in the plane: [2, k]."""
    a = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)])


def antipodal() -> np.ndarray:
    """Two opposite unit vectors on a line: [1, 2]."""
    return np.array([[1.0, -1.0]])


def tetrahedron() -> np.ndarray:
    """A regular tetrahedron of unit vectors: [3, 4]."""
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float).T
    return v / np.sqrt(3)


def square_antiprism() -> np.ndarray:
    """8 unit vectors forming a square antiprism that is a tight frame (h² = 1/3): [3, 8]."""
    h, rho = np.sqrt(1 / 3), np.sqrt(2 / 3)
    top = [(rho * np.cos(k * np.pi / 2), rho * np.sin(k * np.pi / 2), h) for k in range(4)]
    bottom = [(rho * np.cos(k * np.pi / 2 + np.pi / 4), rho * np.sin(k * np.pi / 2 + np.pi / 4), -h)
              for k in range(4)]
    return np.array(top + bottom).T


def cube() -> np.ndarray:
    """The 8 corners of a cube, normalised: [3, 8]."""
    return np.array(list(itertools.product((-1.0, 1.0), repeat=3))).T / np.sqrt(3)


def icosahedron() -> np.ndarray:
    """The 12 vertices of an icosahedron (cyclic permutations of (0, ±1, ±φ)), normalised: [3, 12]."""
    phi = (1 + np.sqrt(5)) / 2
    base = [np.array([0.0, a, b * phi]) for a in (-1, 1) for b in (-1, 1)]
    v = np.array([np.roll(x, r) for x in base for r in range(3)]).T
    return v / np.linalg.norm(v, axis=0)


def shapes() -> dict[str, np.ndarray]:
    """Every shape the analysis names, as unit columns [d, k], keyed by its name."""
    return {"dedicated": np.ones((1, 1)), "antipodal pair": antipodal(), "triangle": polygon(3),
            "tetrahedron": tetrahedron(), "pentagon": polygon(5), "hexagon": polygon(6),
            "heptagon": polygon(7), "octagon": polygon(8), "square antiprism": square_antiprism(),
            "cube": cube(), "icosahedron": icosahedron()}


def trained_noise(W: np.ndarray, seed: int, sigma: float = 0.035, norm_jitter: float = 0.05) -> np.ndarray:
    """``W`` [m, n] with the imperfection of trained models: every entry moved by N(0, sigma²)
    (cross-factor |cos| then has std ≈ 0.05 and reaches ~0.1–0.15 in a model) and every
    column's norm scaled by 1 + N(0, norm_jitter²)."""
    rng = np.random.default_rng(seed)
    noisy = W + sigma * rng.standard_normal(W.shape)
    return noisy * (1 + norm_jitter * rng.standard_normal(W.shape[1]))


def block(*parts: np.ndarray, m: Optional[int] = None, n_zero: int = 0) -> np.ndarray:
    """Place geometries in orthogonal subspaces (a tegum product): [m, Σk + n_zero]."""
    rows = sum(p.shape[0] for p in parts)
    m = rows if m is None else m
    cols = sum(p.shape[1] for p in parts)
    W = np.zeros((m, cols + n_zero))
    r = c = 0
    for p in parts:
        W[r:r + p.shape[0], c:c + p.shape[1]] = p
        r += p.shape[0]
        c += p.shape[1]
    return W


def rotate(W: np.ndarray, seed: int = 0) -> np.ndarray:
    """W under a random orthogonal map of the hidden space (geometry unchanged)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(W.shape[0], W.shape[0])))
    return q @ W


def metrics_from_W(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """norm, interference, dimensionality [n] of W [m, n] as docs/store.md defines them."""
    n = W.shape[1]
    norm = np.sqrt((W ** 2).sum(axis=0))
    inter = np.zeros(n)
    dim = np.zeros(n)
    for i in range(n):
        if norm[i] < 1e-3:
            continue
        dots = np.array([(W[:, i] / norm[i]) @ W[:, j] for j in range(n)])
        inter[i] = (dots ** 2).sum() - dots[i] ** 2
        dim[i] = norm[i] ** 2 / (dots ** 2).sum()
    return norm, inter, dim


# ---------------------------------------------------------------------------- time series


def checkpoint_steps(steps: int, n_log: int = 30, n_lin: int = 20) -> np.ndarray:
    """Step 0, log-spaced early, linear later and the last step (the trainer's schedule)."""
    log = np.geomspace(1, steps, n_log).round().astype(int)
    lin = np.linspace(0, steps, n_lin + 1).round().astype(int)
    return np.unique(np.concatenate([[0], log, lin, [steps]]))


def sigmoid_log(steps: np.ndarray, at: float, width: float = 0.06) -> np.ndarray:
    """0 → 1 around step ``at`` on a log-step axis (width in decades)."""
    x = np.log10(np.maximum(steps, 1))
    return 1 / (1 + np.exp(-(x - np.log10(at)) / width))


def keyframe_path(frames: list[np.ndarray], at: list[float], width: float = 0.06) -> Callable:
    """W(step) moving from frames[i] to frames[i+1] around step at[i]."""
    def path(steps: np.ndarray) -> np.ndarray:
        W = np.repeat(frames[0][None], len(steps), axis=0).astype(float)
        for (a, b), t in zip(zip(frames, frames[1:]), at):
            w = sigmoid_log(steps, t, width)[:, None, None]
            W = W + w * (b - a)
        return W
    return path


def staircase_loss(levels: list[float], at: list[float], width: float = 0.06) -> Callable:
    """A loss with plateaus at ``levels`` and drops around the steps ``at``."""
    def loss(steps: np.ndarray) -> np.ndarray:
        y = np.full(len(steps), np.log10(levels[0]))
        for (a, b), t in zip(zip(levels, levels[1:]), at):
            y = y + sigmoid_log(steps, t, width) * (np.log10(b) - np.log10(a))
        return 10 ** y
    return loss


# ---------------------------------------------------------------------------- stores


@dataclass
class FakePoint:
    """One point of a synthetic sweep."""

    settings: dict
    seed: int
    W: np.ndarray
    final_loss: float
    importance: np.ndarray
    density: np.ndarray
    seed_index: int = 0
    W_path: Optional[Callable] = None
    loss_path: Optional[Callable] = None
    W2: Optional[np.ndarray] = None
    status: str = "done"
    extra: dict = field(default_factory=dict)
    selection_loss: Optional[float] = None
    """Schema 2: the loss on evaluation rows the cell's seeds share (default: final_loss)."""


def _hash(obj, k: int = 16) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:k]


def point_id(p: FakePoint) -> str:
    return _hash([p.settings, p.seed])


def cell_id(p: FakePoint) -> str:
    return _hash(p.settings)


def series(p: FakePoint, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [T, m, n] and loss [T] of a point at the checkpoints."""
    if p.W_path is not None:
        Ws = p.W_path(steps)
    else:
        init = 0.3 * np.random.default_rng(p.seed).normal(size=p.W.shape)
        Ws = keyframe_path([init, p.W], [30.0], 0.15)(steps)
    Ws[-1] = p.W
    if p.loss_path is not None:
        loss = p.loss_path(steps)
    else:
        loss = staircase_loss([p.final_loss * 4, p.final_loss], [30.0], 0.15)(steps)
    loss[-1] = p.final_loss
    return Ws, loss


def _write(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), "_" + os.path.basename(path))
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_store(root: str, name: str, points: list[FakePoint], swept: list[str], steps: int = 2000,
                per_trial: int = 4, kind: str = "relu_out", write_done: Optional[set] = None,
                skip_weights: bool = False, schema: int = 1, history: bool = True) -> str:
    """Write a sweep store under ``root/name`` and return its path.

    Points are packed ``per_trial`` to a trial in order; every trial is finished unless
    ``write_done`` names the trial indices that are (the others stay pending, without files).
    ``schema`` 2 adds ``selection_loss`` (points, done markers), ``reconstruction`` and
    ``penalty`` (metrics) and a ``step`` column to weights, with a row per checkpoint when
    ``history`` (else the final step only).
    """
    sweep_dir = os.path.join(root, name)
    os.makedirs(sweep_dir, exist_ok=True)
    ckpts = checkpoint_steps(steps)
    rows = []
    trials = [points[i:i + per_trial] for i in range(0, len(points), per_trial)]
    for t, pack in enumerate(trials):
        key = f"t{t:04d}" + _hash([point_id(p) for p in pack], 8)
        finished = write_done is None or t in write_done
        met = {k: [] for k in ("point_id", "step", "loss", "train_loss", "frob", "d_star", "lr")}
        fea = {k: [] for k in ("point_id", "step", "feature", "norm", "interference", "dimensionality",
                               "bias", "importance", "density")}
        wts = {k: [] for k in ("point_id", "step", "n_hidden", "n_features", "W", "b", "W2")}
        for p in pack:
            pid = point_id(p)
            m, n = p.W.shape
            Ws, loss = series(p, ckpts)
            for step, W, lo in zip(ckpts, Ws, loss):
                frob = float((W ** 2).sum())
                for k, v in (("point_id", pid), ("step", int(step)), ("loss", lo), ("train_loss", lo),
                             ("frob", frob), ("d_star", m / frob), ("lr", 1e-3)):
                    met[k].append(v)
                norm, inter, dim = metrics_from_W(W)
                for i in range(n):
                    for k, v in (("point_id", pid), ("step", int(step)), ("feature", i), ("norm", norm[i]),
                                 ("interference", inter[i]), ("dimensionality", dim[i]), ("bias", 0.0),
                                 ("importance", p.importance[i]), ("density", p.density[i])):
                        fea[k].append(v)
            kept = range(len(ckpts)) if schema >= 2 and history else [len(ckpts) - 1]
            for t in kept:
                for k, v in (("point_id", pid), ("step", int(ckpts[t])), ("n_hidden", m), ("n_features", n),
                             ("W", Ws[t].reshape(-1).tolist()), ("b", [0.0] * n),
                             ("W2", None if p.W2 is None else p.W2.reshape(-1).tolist())):
                    wts[k].append(v)
            selection = p.final_loss if p.selection_loss is None else p.selection_loss
            extra = {"selection_loss": selection if finished else None,
                     "selection_reconstruction": selection if finished else None} if schema >= 2 else {}
            rows.append(dict(point_id=pid, trial_key=key if finished else None,
                             status=p.status if finished else "pending", seed=p.seed,
                             seed_index=p.seed_index, cell_id=cell_id(p),
                             final_loss=p.final_loss if finished else None,
                             final_d_star=m / float((p.W ** 2).sum()) if finished else None,
                             diverged_step=None, **extra, **{"model.kind": kind, "model.n_features": n,
                                                             "model.n_hidden": m, "train.steps": steps},
                             **p.settings))
        if not finished:
            continue
        f32 = pa.float32()
        v2 = {"reconstruction": pa.array(met["loss"], f32),
              "penalty": pa.array([0.0] * len(met["loss"]), f32)} if schema >= 2 else {}
        _write(pa.table({"point_id": pa.array(met["point_id"], pa.string()),
                         "step": pa.array(met["step"], pa.int64()),
                         **{k: pa.array(met[k], f32) for k in ("loss", "train_loss", "frob", "d_star", "lr")},
                         **v2}),
               os.path.join(sweep_dir, "metrics", f"part-{key}.parquet"))
        _write(pa.table({"point_id": pa.array(fea["point_id"], pa.string()),
                         "step": pa.array(fea["step"], pa.int64()),
                         "feature": pa.array(fea["feature"], pa.int32()),
                         **{k: pa.array(fea[k], f32) for k in ("norm", "interference", "dimensionality",
                                                               "bias", "importance", "density")}}),
               os.path.join(sweep_dir, "features", f"part-{key}.parquet"))
        if not skip_weights:
            step_col = {"step": pa.array(wts["step"], pa.int64())} if schema >= 2 else {}
            _write(pa.table({"point_id": pa.array(wts["point_id"], pa.string()), **step_col,
                             "n_hidden": pa.array(wts["n_hidden"], pa.int32()),
                             "n_features": pa.array(wts["n_features"], pa.int32()),
                             "W": pa.array(wts["W"], pa.list_(f32)), "b": pa.array(wts["b"], pa.list_(f32)),
                             "W2": pa.array(wts["W2"], pa.list_(f32))}),
                   os.path.join(sweep_dir, "weights", f"part-{key}.parquet"))
        done_v2 = {"selection_loss": pa.array([r["selection_loss"] for r in rows[-len(pack):]], pa.float64())
                   } if schema >= 2 else {}
        _write(pa.table({"point_id": pa.array([point_id(p) for p in pack], pa.string()),
                         "status": pa.array([p.status for p in pack], pa.string()), **done_v2}),
               os.path.join(sweep_dir, "done", f"{key}.parquet"))
    _write(pa.Table.from_pylist(rows), os.path.join(sweep_dir, "points.parquet"))
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump({"name": name, "schema_version": schema, "grid_hash": _hash(swept), "swept": swept,
                   "counts": {"points": len(points)}}, f)
    return sweep_dir


# ---------------------------------------------------------------------------- phase stores


def phase_losses(n: int, s: float, r: float) -> dict[str, float]:
    """Expected loss of each candidate solution (paper.md E3/E4) keyed by the extra feature's phase.

    For n=3, m=2 the candidates are: ignore the extra (main features dedicated), extra antipodal
    with a main feature, main features antipodal with the extra dedicated, and a main feature
    ignored with the extra dedicated; a phase's loss is its best candidate's.
    """
    drop = s / 3 - s ** 2 / 4
    if n == 2:
        return {"not_learned": r * drop, "dedicated": drop, "superposition": (1 + r) * s ** 2 / 6}
    return {"not_learned": r * drop, "superposition": (1 + r) * s ** 2 / 6,
            "dedicated": min(2 * s ** 2 / 6, drop)}


def phase_weights(n: int, phase: str, s: float) -> np.ndarray:
    """The solution W [m, n] whose extra feature (the last) is in ``phase``."""
    if n == 2:
        return {"not_learned": np.array([[1.0, 0.0]]), "dedicated": np.array([[0.0, 1.0]]),
                "superposition": np.array([[1.0, -1.0]])}[phase]
    main_pair = s < 4 / 7
    return {"not_learned": np.array([[1.0, 0, 0], [0, 1.0, 0]]),
            "superposition": np.array([[1.0, 0, 0], [0, 1.0, -1.0]]),
            "dedicated": (np.array([[1.0, -1.0, 0], [0, 0, 1.0]]) if main_pair
                          else np.array([[1.0, 0, 0], [0, 0, 1.0]]))}[phase]


def phase_points(n: int, densities, importances, seeds: int = 2, seed0: int = 0) -> tuple[list[FakePoint], dict]:
    """Points of a phase-diagram sweep whose best seed holds the lowest-loss solution.

    The other seeds hold worse solutions with higher loss, placed at random seed indices so
    that only the loss identifies the best. Returns the points and {(s, r): true phase}.
    """
    rng = np.random.default_rng(seed0)
    pts, truth = [], {}
    for s in densities:
        for r in importances:
            losses = phase_losses(n, s, r)
            ranked = sorted(losses, key=losses.get)
            truth[(s, r)] = ranked[0]
            order = rng.permutation(seeds)
            for seed in range(seeds):
                phase = ranked[min(order[seed], len(ranked) - 1)]
                loss = losses[phase] + 1e-4 * order[seed]
                W = phase_weights(n, phase, s) + 1e-3 * rng.normal(size=(n - 1, n))
                pts.append(FakePoint({"data.density": float(s), "data.extra_importance": float(r)},
                                     seed=seed0 * 1000 + seed, seed_index=seed, W=W, final_loss=loss,
                                     importance=np.array([1.0] * (n - 1) + [r]),
                                     density=np.full(n, float(s))))
    return pts, truth


# ---------------------------------------------------------------------------- intro store


def intro_points(steps: int = 2000) -> list[FakePoint]:
    """n=5, m=2, I=0.9^i at densities 1, 0.2 and 0.05 (paper E1), one seed each.

    Dense: features 0 and 1 dedicated. 0.2: two antipodal pairs, feature 4 dropped, and a loss
    drop at step 300 with no geometry change. 0.05: learned as two antipodal pairs by step 40,
    then a pentagon around step 600, with the loss dropping at both.
    """
    imp = 0.9 ** np.arange(5)
    init = 0.2 * np.random.default_rng(7).normal(size=(2, 5))
    dense = block(np.eye(2), n_zero=3)
    pairs = np.array([[1, -1, 0, 0, 0], [0, 0, 1, -1, 0]], dtype=float)
    pent = polygon(5)[:, [0, 2, 1, 3, 4]]  # features 0,1 and 2,3 nearly opposite, like the pairs
    pts = []
    for density, W, W_path, loss_path, loss in (
            (1.0, dense, keyframe_path([init, dense], [40.0]), staircase_loss([0.2, 0.12], [40.0]), 0.12),
            (0.2, pairs, keyframe_path([init, pairs], [40.0]),
             staircase_loss([0.08, 0.03, 0.02], [40.0, 300.0]), 0.02),
            (0.05, pent, keyframe_path([init, pairs, pent], [40.0, 600.0]),
             staircase_loss([0.02, 0.006, 0.003], [40.0, 600.0]), 0.003)):
        pts.append(FakePoint({"data.density": density}, seed=0, W=W, final_loss=loss, importance=imp,
                             density=np.full(5, density), W_path=W_path, loss_path=loss_path))
    return pts
