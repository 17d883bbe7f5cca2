"""Energy levels of feature dimensionality (paper E5): D_i clusters at d/k of uniform polytopes.

A feature in a uniform polytope of k vertices spanning d dimensions has D_i = d/k; the paper's
levels are 1 (dedicated), 3/4 (tetrahedron), 2/3 (triangle), 1/2 (antipodal pair),
2/5 (pentagon), 3/8 (square antiprism) and 0 (not learned).
"""

from __future__ import annotations

from dataclasses import dataclass
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


def masked_dimensionality(dimensionality: np.ndarray, norm: np.ndarray, learned_norm: float) -> np.ndarray:
    """D_i with features below ``learned_norm`` set to 0 (a tiny orthogonal column reads ≈1).

    Shapes: any, ``dimensionality`` and ``norm`` alike. NaN stays NaN.
    """
    D = np.asarray(dimensionality, dtype=np.float64)
    return np.where(np.asarray(norm) < learned_norm, 0.0, D)


def assign_levels(D: np.ndarray, tol: float) -> np.ndarray:
    """Index into :data:`LEVELS` of the nearest level within ``tol`` of each D_i, else −1.

    ``D``: any shape; returns int64 of the same shape (−1 also for NaN).
    """
    D = np.asarray(D, dtype=np.float64)
    dist = np.abs(D[..., None] - LEVEL_VALUES)
    idx = np.argmin(np.where(np.isnan(dist), np.inf, dist), axis=-1)
    best = np.take_along_axis(dist, idx[..., None], axis=-1)[..., 0]
    return np.where(best <= tol, idx, -1).astype(np.int64)


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


def level_counts(D: np.ndarray, tol: float) -> np.ndarray:
    """Features of one model at each energy level: [len(LEVELS) + 1], the last for "other".

    ``D`` [n]: masked D_i (0 when not learned).
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
