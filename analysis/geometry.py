"""Geometry of a model's weights: per-feature metrics, tegum factors and the polytopes they form.

A tegum product puts its factors in orthogonal subspaces, so the learned features of ``W``
split into factors wherever their directions stop interfering. Trained models are never exactly
orthogonal across factors (|Ŵ_i·Ŵ_j| up to ~0.1 is common), so:

1. learned features (‖W_i‖ > ``learned_norm``) are linked when |Ŵ_i·Ŵ_j| > ``edge_eps``
   (0.25: above the cross-factor noise of trained models, below the weakest link inside a
   polytope, the tetrahedron's 1/3), and each connected group is a candidate factor;
2. a factor's own subspace (its d principal directions) must be orthogonal to the rest: when
   another learned feature puts more than ``leak_max`` of its unit direction into it, the two
   groups are merged, until no group leaks into another.

A factor of k features spanning d dimensions is named after a regular polytope only when its
shape is that polytope's: each member's cosines with the others, sorted, are within
``shape_tol`` (root mean square over the factor) of an ideal vertex's (every vertex of a
regular polytope sees the same ones), and its members' norms are within ``norm_tol`` of their
mean. Otherwise it is "k in d", described by its D_i.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from toymodels import metrics

from .config import GeometryConfig

NOT_LEARNED = "not learned"


def feature_metrics(W: np.ndarray, zero_norm: float = metrics.NORM_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The store's per-feature metrics from ``W`` [n_hidden, n_features] (toymodels.metrics).

    Returns ``norm`` ‖W_i‖, ``interference`` Σ_{j≠i}(Ŵ_i·W_j)² and ``dimensionality``
    D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², each [n_features]; columns with ‖W_i‖ < ``zero_norm`` get
    interference 0 and D_i 0.
    """
    m = metrics.feature_metrics(np.asarray(W, dtype=np.float64), zero_norm)
    return m["norm"], m["interference"], m["dimensionality"]


# ----------------------------------------------------------------------------- regular polytopes

def _polygon_row(k: int) -> tuple[float, ...]:
    return tuple(np.cos(2 * np.pi * np.arange(1, k) / k))


_R2 = np.sqrt(2.0)


@dataclass(frozen=True)
class Polytope:
    """A regular arrangement of k unit vectors spanning d dimensions that a factor can be named after."""

    name: str
    """What the paper (or geometry) calls it."""
    k: int
    """Vertices (features)."""
    d: int
    """Dimensions spanned."""
    cosines: tuple[float, ...]
    """Cosines of one vertex with the k − 1 others (every vertex sees the same ones)."""

    def row(self) -> np.ndarray:
        """The cosines, sorted [k − 1]."""
        return np.sort(np.asarray(self.cosines, dtype=np.float64))


POLYTOPES: tuple[Polytope, ...] = (
    Polytope("dedicated", 1, 1, ()),
    Polytope("antipodal pair", 2, 1, (-1.0,)),
    Polytope("triangle", 3, 2, _polygon_row(3)),
    Polytope("tetrahedron", 4, 3, (-1 / 3,) * 3),
    Polytope("pentagon", 5, 2, _polygon_row(5)),
    Polytope("hexagon", 6, 2, _polygon_row(6)),
    Polytope("heptagon", 7, 2, _polygon_row(7)),
    Polytope("octagon", 8, 2, _polygon_row(8)),
    # two squares turned by 45° at heights ±1/√3, the tight frame whose D_i is 3/8
    Polytope("square antiprism", 8, 3, (1 / 3, 1 / 3, -1 / 3, (_R2 - 1) / 3, (_R2 - 1) / 3,
                                        -(_R2 + 1) / 3, -(_R2 + 1) / 3)),
    Polytope("cube", 8, 3, (-1.0,) + (-1 / 3,) * 3 + (1 / 3,) * 3),
    Polytope("icosahedron", 12, 3, (-1.0,) + (-1 / np.sqrt(5),) * 5 + (1 / np.sqrt(5),) * 5),
)
"""Regular shapes a factor is named after. A square (4 in 2) and an octahedron (6 in 3) are
tegum products of antipodal pairs and are named as such."""
_ROWS = {p.name: p.row() for p in POLYTOPES}


def shape_deviation(W: np.ndarray, polytope: Polytope) -> float:
    """How far the directions of the columns of ``W`` [m, k] are from ``polytope`` (k vertices).

    Root mean square, over members, of the difference between a member's sorted cosines with
    the others and the polytope's (a vertex's cosines are the same for every vertex of a
    regular polytope, so rotation and order do not matter). 0 for an exact copy.
    """
    W = np.asarray(W, dtype=np.float64)
    k = W.shape[1]
    if k != polytope.k:
        return float("inf")
    if k == 1:
        return 0.0
    U = W / np.linalg.norm(W, axis=0)
    off = np.sort((U.T @ U)[~np.eye(k, dtype=bool)].reshape(k, k - 1), axis=1)
    return float(np.sqrt(np.mean((off - _ROWS[polytope.name]) ** 2)))


def norm_spread(W: np.ndarray) -> float:
    """Largest relative difference of a column norm of ``W`` [m, k] from their mean."""
    norm = np.linalg.norm(np.asarray(W, dtype=np.float64), axis=0)
    return float(np.abs(norm / norm.mean() - 1).max())


def closest_polytope(W: np.ndarray, d: int) -> tuple[str, float]:
    """The polytope with ``W``'s k and ``d`` closest in shape (:func:`shape_deviation`), or ("", inf)."""
    best, dev = "", float("inf")
    for p in POLYTOPES:
        if p.k == W.shape[1] and p.d == d:
            x = shape_deviation(W, p)
            if x < dev:
                best, dev = p.name, x
    return best, dev


# ----------------------------------------------------------------------------- tegum factors

@dataclass(frozen=True)
class Factor:
    """One tegum factor of a model's learned features."""

    features: tuple[int, ...]
    """Indices of its features (ascending)."""
    k: int
    """Number of features."""
    d: int
    """Dimensions they span (principal directions of the unit columns above rank_tol × the largest)."""
    name: str
    """The polytope it matches (see POLYTOPES), else "k in d"."""
    shape: str
    """The polytope of this k and d closest in shape, matched or not ("" when there is none)."""
    deviation: float
    """shape_deviation from that polytope (inf when there is none)."""
    norm_spread: float
    """Largest relative difference of a member's ‖W_i‖ from the factor's mean norm."""
    leak: float
    """Largest norm of another learned feature's unit direction projected into this factor's
    subspace (0: exactly orthogonal to the rest)."""
    mean_dimensionality: float
    """Mean D_i of its features (computed from the full W)."""
    min_dimensionality: float
    """Smallest D_i of its features."""
    max_dimensionality: float
    """Largest D_i of its features."""
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


def _basis(U: np.ndarray, rank_tol: float) -> np.ndarray:
    """Orthonormal basis [m, d] of the principal directions of unit columns ``U`` [m, k]."""
    left, sv, _ = np.linalg.svd(U, full_matrices=False)
    return left[:, sv > rank_tol * sv[0]]


def split_factors(U: np.ndarray, cfg: GeometryConfig = GeometryConfig()) -> list[np.ndarray]:
    """Group unit columns ``U`` [m, k] into tegum factors; returns index arrays into the columns.

    Linked groups (|cos| > ``edge_eps``) are merged while one leaks into another's subspace
    (projection norm > ``leak_max``).
    """
    k = U.shape[1]
    labels = _components(np.abs(U.T @ U) > cfg.edge_eps)
    while True:
        groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
        merged = False
        for idx in groups:
            if len(idx) == k:
                break
            Q = _basis(U[:, idx], cfg.rank_tol)
            proj = np.linalg.norm(Q.T @ U, axis=0)
            proj[idx] = 0
            if proj.max() > cfg.leak_max:
                others = np.unique(labels[proj > cfg.leak_max])
                labels = np.where(np.isin(labels, others), labels[idx[0]], labels)
                merged = True
                break
        if not merged:
            return sorted(groups, key=lambda g: g[0])


def tegum_factors(W: np.ndarray, learned_norm: float, cfg: GeometryConfig = GeometryConfig()
                  ) -> tuple[list[Factor], list[int]]:
    """Split the learned features of ``W`` [n_hidden, n_features] into named tegum factors.

    Returns the factors (ordered by their first feature) and the indices of the features that
    are not learned (‖W_i‖ ≤ ``learned_norm``).
    """
    W = np.asarray(W, dtype=np.float64)
    norm, _, dim = feature_metrics(W)
    learned = np.flatnonzero(norm > learned_norm)
    unlearned = np.flatnonzero(norm <= learned_norm).tolist()
    if learned.size == 0:
        return [], unlearned
    U = W[:, learned] / norm[learned]
    factors = []
    for local in split_factors(U, cfg):
        members = learned[local]
        Q = _basis(U[:, local], cfg.rank_tol)
        d = Q.shape[1]
        rest = np.setdiff1d(np.arange(len(learned)), local)
        leak = float(np.linalg.norm(Q.T @ U[:, rest], axis=0).max()) if rest.size else 0.0
        shape, dev = closest_polytope(W[:, members], d)
        spread = norm_spread(W[:, members])
        D = dim[members]
        regular = dev <= cfg.shape_tol and spread <= cfg.norm_tol
        factors.append(Factor(
            features=tuple(int(i) for i in members), k=len(members), d=d,
            name=shape if regular else f"{len(members)} in {d}", shape=shape,
            deviation=dev, norm_spread=spread, leak=leak, mean_dimensionality=float(D.mean()),
            min_dimensionality=float(D.min()), max_dimensionality=float(D.max()),
            uniform=bool(np.all(np.abs(D - d / len(members)) <= cfg.uniform_tol)),
        ))
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


def label(W: np.ndarray, learned_norm: float, cfg: GeometryConfig = GeometryConfig()) -> str:
    """:func:`describe` of :func:`tegum_factors` of ``W`` [n_hidden, n_features]."""
    factors, unlearned = tegum_factors(W, learned_norm, cfg)
    return describe(factors, len(unlearned))
