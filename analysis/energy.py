"""Energy levels of feature dimensionality (paper E5): D_i clusters at d/k of uniform polytopes.

A feature in a uniform polytope of k vertices spanning d dimensions has D_i = d/k; the paper's
levels are 1 (dedicated), 3/4 (tetrahedron), 2/3 (triangle), 1/2 (antipodal pair),
2/5 (pentagon), 3/8 (square antiprism) and 0 (not learned).

Each level has its own tolerance, narrower than half the gap to its nearest neighbour (2/5 and
3/8 are only 0.025 apart), so a D_i is never "on" two levels. Whether the learned features sit
on levels more than chance says is measured against random W: k Gaussian columns in the same m
dimensions, k the number of learned features of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Level:
    """One energy level: D = d/k for a uniform polytope of k vertices in d dimensions."""

    value: float
    """D_i at this level."""
    text: str
    """The fraction as written in figures, e.g. "2/5"."""
    name: str
    """The geometry a feature at this level belongs to."""
    k: int
    """Vertices (features) of that geometry."""
    d: int
    """Dimensions it spans."""


LEVELS: tuple[Level, ...] = (
    Level(1.0, "1", "dedicated", 1, 1),
    Level(3 / 4, "3/4", "tetrahedron", 4, 3),
    Level(2 / 3, "2/3", "triangle", 3, 2),
    Level(1 / 2, "1/2", "antipodal pair", 2, 1),
    Level(2 / 5, "2/5", "pentagon", 5, 2),
    Level(3 / 8, "3/8", "square antiprism", 8, 3),
    Level(0.0, "0", "not learned", 1, 0),
)
LEVEL_VALUES = np.array([lv.value for lv in LEVELS])
ZERO = len(LEVELS) - 1
"""Index of the "not learned" level."""


def tolerances(level_tol: float, gap_fraction: float) -> np.ndarray:
    """Per-level tolerance [len(LEVELS)]: ``level_tol``, narrowed to ``gap_fraction`` × the gap
    to the nearest other level (2/5 and 3/8 get 0.01 with the defaults 0.05 and 0.4). Level 0
    gets 0: only features masked as not learned (D_i set to 0) sit on it."""
    gaps = np.abs(LEVEL_VALUES[:, None] - LEVEL_VALUES[None, :])
    np.fill_diagonal(gaps, np.inf)
    tol = np.minimum(level_tol, gap_fraction * gaps.min(axis=1))
    tol[ZERO] = 0.0
    return tol


def masked_dimensionality(dimensionality: np.ndarray, norm: np.ndarray, learned_norm: float) -> np.ndarray:
    """D_i with features below ``learned_norm`` set to 0 (a tiny orthogonal column reads ≈1).

    Shapes: any, ``dimensionality`` and ``norm`` alike. NaN stays NaN.
    """
    D = np.asarray(dimensionality, dtype=np.float64)
    return np.where(np.asarray(norm) < learned_norm, 0.0, D)


def assign_levels(D: np.ndarray, tol) -> np.ndarray:
    """Index into :data:`LEVELS` of the level whose tolerance holds each D_i, else −1.

    ``D``: any shape; ``tol``: one tolerance or one per level (:func:`tolerances`). Returns
    int64 of ``D``'s shape (−1 also for NaN).
    """
    D = np.asarray(D, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), LEVEL_VALUES.shape)
    dist = np.abs(D[..., None] - LEVEL_VALUES)
    dist = np.where(np.isnan(dist) | (dist > tol), np.inf, dist)
    idx = np.argmin(dist, axis=-1)
    return np.where(np.isfinite(np.take_along_axis(dist, idx[..., None], axis=-1)[..., 0]), idx, -1
                    ).astype(np.int64)


def random_dimensionality(m: int, k: int, rows: int = 4096, seed: int = 0) -> np.ndarray:
    """D_i of random W: k Gaussian columns in m dimensions, drawn until ≥ ``rows`` values [≥ rows]."""
    rng = np.random.default_rng(seed)
    draws = -(-rows // k)
    W = rng.standard_normal((draws, m, k))
    G = np.einsum("dmi,dmj->dij", W, W)
    sq = np.einsum("dii->di", G)
    return (sq ** 2 / (G ** 2).sum(axis=2)).ravel()


@lru_cache(maxsize=4096)
def chance_on_level(m: int, k: int, level_tol: float, gap_fraction: float) -> float:
    """Fraction of random W's D_i (:func:`random_dimensionality`) on a nonzero level; 0 when k = 0."""
    if k == 0:
        return 0.0
    idx = assign_levels(random_dimensionality(m, k), tolerances(level_tol, gap_fraction))
    return float(np.mean((idx >= 0) & (idx != ZERO)))


def describe_levels(level_idx: Sequence[int]) -> str:
    """Name the geometry implied by a set of features' levels, e.g. "antipodal pair ×2 + not learned ×1".

    Features at level d/k are counted in groups of k; a count that is not a multiple of k is
    written as "c at D=d/k". ``level_idx``: indices into :data:`LEVELS` (−1: between levels).
    """
    idx = np.asarray(level_idx, dtype=np.int64)
    parts = []
    for i, lv in enumerate(LEVELS):
        c = int(np.sum(idx == i))
        if c == 0:
            continue
        parts.append(f"{lv.name} ×{c // lv.k}" if c % lv.k == 0 else f"{c} at D={lv.text}")
    between = int(np.sum(idx < 0))
    if between:
        parts.append(f"{between} between levels")
    return " + ".join(parts)


LEVEL_TEXTS = tuple(lv.text for lv in LEVELS) + ("other",)


def level_counts(D: np.ndarray, tol) -> np.ndarray:
    """Features of one model at each energy level: [len(LEVELS) + 1], the last for "other".

    ``D`` [n]: masked D_i (0 when not learned); ``tol`` as in :func:`assign_levels`.
    """
    idx = assign_levels(D, tol)
    return np.bincount(np.where(idx < 0, len(LEVELS), idx), minlength=len(LEVELS) + 1)


def level_table(keys: pd.DataFrame, counts: np.ndarray) -> pd.DataFrame:
    """Where D_i clusters: features at each energy level per group of ``keys`` (e.g. density).

    ``keys`` [P rows]: the grouping columns of each model; ``counts`` [P, len(LEVELS) + 1] from
    :func:`level_counts`. Returns one row per group and level that has features, with
    ``count`` and ``fraction`` of the group's features (seeds pooled).
    """
    by = list(keys.columns)
    frame = keys.reset_index(drop=True).copy()
    frame[list(LEVEL_TEXTS)] = counts
    sums = frame.groupby(by, dropna=False, sort=True)[list(LEVEL_TEXTS)].sum()
    long = sums.stack().rename("count").reset_index().rename(columns={f"level_{len(by)}": "level"})
    long.columns = by + ["level", "count"]
    long = long[long["count"] > 0].copy()
    long["fraction"] = long["count"] / long.groupby(by, dropna=False)["count"].transform("sum")
    info = {lv.text: (lv.value, lv.name) for lv in LEVELS}
    long["level_value"] = long["level"].map(lambda t: info.get(t, (np.nan, ""))[0])
    long["geometry"] = long["level"].map(lambda t: info.get(t, (np.nan, "between levels"))[1])
    return long[by + ["level", "level_value", "geometry", "count", "fraction"]].reset_index(drop=True)


def excess_table(keys: pd.DataFrame, counts: np.ndarray, chance: np.ndarray) -> pd.DataFrame:
    """Learned features on a level against chance, per group of ``keys`` (seeds pooled).

    ``counts`` [P, len(LEVELS) + 1] as in :func:`level_table`; ``chance`` [P]: each model's
    :func:`chance_on_level`. Returns per group ``points``, ``learned`` (features), ``on_level``
    (fraction of learned features on a nonzero level), ``chance`` (the same for random W with
    each model's m and number of learned features, weighted by learned features) and
    ``excess`` = on_level − chance (NaN where nothing is learned).
    """
    by = list(keys.columns)
    learned = counts.sum(axis=1) - counts[:, ZERO]
    frame = keys.reset_index(drop=True).assign(
        points=1, learned=learned, on=counts[:, :ZERO].sum(axis=1), expected=np.asarray(chance) * learned)
    out = frame.groupby(by, dropna=False, sort=True)[["points", "learned", "on", "expected"]].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["on_level"] = np.where(out["learned"] > 0, out["on"] / out["learned"], np.nan)
        out["chance"] = np.where(out["learned"] > 0, out["expected"] / out["learned"], np.nan)
    out["excess"] = out["on_level"] - out["chance"]
    return out.drop(columns=["on", "expected"]).reset_index()
