"""Trained packing against random packing when n ≫ m ≫ 1.

For a sweep over ``model.n_hidden`` with many features (n ≥ 4m) of one density each (no power
law: that is analysis/scaling.py's sweep): per point, over its k learned features, the mean and
the largest interference Σ_{j≠i} (Ŵ_i·W_j)², the mean crowding Σ_{j≠i} (Ŵ_i·Ŵ_j)² (the
interference of unit vectors) and the largest overlap max_{j≠i} |Ŵ_i·Ŵ_j| — each beside the same
quantity for a random packing (the same column norms in uniformly random directions: the
Johnson–Lindenstrauss baseline, one draw per point, seeded by its id) and beside the best any
packing of k unit vectors in m dimensions can do (Welch's bounds: mean crowding ≥ k/m − 1,
largest overlap ≥ √((k − m)/(m(k − 1)))). Random directions crowd by (k − 1)/m on average, only
a factor (k − 1)/(k − m) above the bound, so the mean says little when k ≫ m; the largest overlap
separates a designed packing (near 1/√m) from random ones (near √(2 ln k² / m)). And D* =
m/‖W‖_F² against m/n. Reads the final weights from the store only.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from toymodels.metrics import feature_metrics

from . import plots
from .figures import Figure

M_KEY = "model.n_hidden"
MIN_RATIO = 4
"""Features per hidden dimension from which a sweep counts as many-features."""


def packing(W: np.ndarray, threshold: float) -> dict:
    """How many columns of W [m, n] are learned (norm >= threshold), and over them the mean and
    max interference, the mean crowding and the max |cos|."""
    metrics = feature_metrics(W)
    learned = metrics["norm"] >= threshold
    k = int(learned.sum())
    if k < 2:
        return {"learned": k, **dict.fromkeys(("mean_interference", "max_interference", "mean_crowding",
                                               "max_overlap"), np.nan)}
    unit = W[:, learned] / metrics["norm"][learned]
    cos = np.abs(unit.T @ unit)
    np.fill_diagonal(cos, 0.0)
    inter = metrics["interference"][learned]
    return {"learned": k, "mean_interference": float(inter.mean()), "max_interference": float(inter.max()),
            "mean_crowding": float((cos ** 2).sum(axis=0).mean()), "max_overlap": float(cos.max())}


def welch(k: int, m: int) -> dict:
    """The least mean crowding and the least largest overlap of any k unit vectors in m dimensions."""
    if k <= m:
        return {"welch_crowding": 0.0, "welch_overlap": 0.0}
    return {"welch_crowding": k / m - 1.0, "welch_overlap": float(np.sqrt((k - m) / (m * (k - 1.0))))}


def random_like(W: np.ndarray, seed: int) -> np.ndarray:
    """W's column norms in uniformly random directions."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal(W.shape)
    return G / np.linalg.norm(G, axis=0) * np.linalg.norm(W, axis=0)


def table(run) -> pd.DataFrame | None:
    """Per finished point: m, n, density, D*, and trained and random packing figures."""
    pts = run.pts
    law = pts["data.density_exponent"].astype(float) if "data.density_exponent" in pts else pd.Series(0.0, index=pts.index)
    if M_KEY not in run.swept or (pts["model.n_features"] < MIN_RATIO * pts[M_KEY]).any() or (law > 0).any():
        return None
    rows = []
    threshold = run.cfg.learned_norm
    for w in run.store.iter_weights():
        trained = packing(w.W, threshold)
        chance = packing(random_like(w.W, zlib.crc32(w.point_id.encode())), threshold)  # same norms, same count
        m, n = w.W.shape
        k = trained.pop("learned")
        rows.append({"point_id": w.point_id, "m": m, "n": n, "learned": k, "d_star": m / float((w.W ** 2).sum()),
                     **trained, **{f"random_{key}": v for key, v in chance.items() if key != "learned"},
                     **welch(k, m)})
    frame = pd.DataFrame(rows)
    return frame.merge(pts[["point_id", "data.density"]], on="point_id") if "data.density" in pts else frame


def draw(run, out: str) -> list[Figure]:
    frame = table(run)
    if frame is None or frame.empty:
        return []
    fc = run.cfg.figures
    fig = plots.new_figure(12, 4)
    axes = fig.subplots(1, 3)
    colour = frame["data.density"] if "data.density" in frame else None
    for ax, key, name in ((axes[0], "mean_crowding", "mean Σ_j cos² (crowding)"),
                          (axes[1], "max_overlap", "largest |cos| between features")):
        ax.scatter(frame["m"], frame[f"random_{key}"], marker="x", color="0.5", label="random directions (same norms)")
        ax.scatter(frame["m"], frame[f"welch_{key.split('_')[1]}"], marker="_", s=120, color="k",
                   label="Welch bound (best possible)")
        sc = ax.scatter(frame["m"], frame[key], c=colour, cmap="viridis", norm=LogNorm() if colour is not None else None, label="trained")
        ax.set(xscale="log", yscale="log", xlabel="hidden dimensions m", title=name)
        ax.legend(fontsize=8)
    if colour is not None:
        fig.colorbar(sc, ax=axes[1], label="density")
    axes[2].scatter(frame["m"] / frame["n"], frame["d_star"], c=colour, cmap="viridis",
                    norm=LogNorm() if colour is not None else None)
    lim = [float((frame["m"] / frame["n"]).min()), 1.0]
    axes[2].plot(lim, lim, "k:", lw=1, label="D* = m/n (every feature at unit norm)")
    axes[2].set(xscale="log", yscale="log", xlabel="m / n", ylabel="D* = m/‖W‖²", title="dimensions per feature")
    axes[2].legend(fontsize=8)
    title = f"{run.store.name}: trained packing against random directions"
    fig.suptitle(title)
    return [Figure("many features", title, plots.save(fig, out, "many_features", fc.formats, fc.dpi))]
