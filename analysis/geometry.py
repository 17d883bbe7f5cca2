"""Geometry of final weights: per-feature metrics and tegum-factor labelling.

Features whose normalised directions interfere (|Ŵ_i·Ŵ_j| > ``edge_eps``) are linked; the
connected components of that graph are the tegum factors (a tegum product puts its factors
in orthogonal subspaces). A factor of k features spanning d dimensions is named after the
uniform polytope with those numbers, and its members' D_i are checked against d/k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toymodels import metrics

from .config import GeometryConfig

NAMES = {(1, 1): "dedicated", (2, 1): "antipodal pair", (3, 2): "triangle", (4, 3): "tetrahedron",
         (5, 2): "pentagon", (8, 3): "square antiprism"}
NOT_LEARNED = "not learned"


def feature_metrics(W: np.ndarray, zero_norm: float = metrics.NORM_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The store's per-feature metrics from ``W`` [n_hidden, n_features] (toymodels.metrics).

    Returns ``norm`` ‖W_i‖, ``interference`` Σ_{j≠i}(Ŵ_i·W_j)² and ``dimensionality``
    D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², each [n_features]; columns with ‖W_i‖ < ``zero_norm`` get
    interference 0 and D_i 0.
    """
    m = metrics.feature_metrics(np.asarray(W, dtype=np.float64), zero_norm)
    return m["norm"], m["interference"], m["dimensionality"]


@dataclass(frozen=True)
class Factor:
    """One tegum factor of a model's learned features."""

    features: tuple[int, ...]
    """Indices of its features (ascending)."""
    k: int
    """Number of features."""
    d: int
    """Dimensions they span (numerical rank)."""
    name: str
    """dedicated, antipodal pair, triangle, tetrahedron, pentagon, square antiprism, or "k in d"."""
    mean_dimensionality: float
    """Mean D_i of its features (computed from the full W)."""
    uniform: bool
    """Every member's D_i is within ``uniform_tol`` of d/k (a uniform polytope)."""

    @property
    def d_over_k(self) -> float:
        """The energy level of a uniform polytope of this size."""
        return self.d / self.k


def _components(adj: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member index) of each node of ``adj`` [k, k]."""
    k = adj.shape[0]
    labels = np.arange(k)
    while True:
        neigh = np.where(adj, labels[None, :], k).min(axis=1)
        new = np.minimum(labels, neigh)
        new = new[new]  # pointer jumping speeds up long chains
        if np.array_equal(new, labels):
            return labels
        labels = new


def factor_name(k: int, d: int, cosines: np.ndarray) -> str:
    """Name of a connected factor of ``k`` features spanning ``d`` dimensions.

    ``cosines`` [k, k]: Ŵ_iᵀŴ_j of its members; two features in one dimension are an antipodal
    pair only when they point in opposite directions.
    """
    if (k, d) == (2, 1) and cosines[0, 1] > 0:
        return "2 in 1"
    return NAMES.get((k, d), f"{k} in {d}")


def tegum_factors(W: np.ndarray, learned_norm: float, cfg: GeometryConfig = GeometryConfig()
                  ) -> tuple[list[Factor], list[int]]:
    """Split the learned features of ``W`` [n_hidden, n_features] into tegum factors.

    Returns the factors (ordered by their first feature) and the indices of the features that
    are not learned (‖W_i‖ ≤ ``learned_norm``).
    """
    W = np.asarray(W, dtype=np.float64)
    norm, _, dim = feature_metrics(W)
    learned = np.flatnonzero(norm > learned_norm)
    unlearned = np.flatnonzero(norm <= learned_norm).tolist()
    if learned.size == 0:
        return [], unlearned
    W_hat = W[:, learned] / norm[learned]
    cos = W_hat.T @ W_hat
    adj = np.abs(cos) > cfg.edge_eps
    labels = _components(adj)
    factors = []
    for lab in np.unique(labels):
        local = np.flatnonzero(labels == lab)
        members = learned[local]
        k = len(members)
        if k == 1:
            d = 1
        else:
            sv = np.linalg.svd(W[:, members], compute_uv=False)
            d = int(np.sum(sv > cfg.rank_tol * sv[0]))
        D = dim[members]
        factors.append(Factor(
            features=tuple(int(i) for i in members), k=k, d=d,
            name=factor_name(k, d, cos[local][:, local]),
            mean_dimensionality=float(D.mean()),
            uniform=bool(np.all(np.abs(D - d / k) <= cfg.uniform_tol)),
        ))
    factors.sort(key=lambda f: f.features[0])
    return factors, unlearned


def describe(factors: list[Factor], n_unlearned: int) -> str:
    """One line naming a model's geometry, e.g. "antipodal pair ×2 + not learned ×1"."""
    counts: dict[str, int] = {}
    for f in factors:
        counts[f.name] = counts.get(f.name, 0) + 1
    parts = [f"{name} ×{c}" for name, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if n_unlearned:
        parts.append(f"{NOT_LEARNED} ×{n_unlearned}")
    return " + ".join(parts) if parts else "empty"
