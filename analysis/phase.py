"""Phase diagrams of the extra feature (paper E3, E4): classification, seed aggregation, theory.

The extra feature is the last one (index n−1). From its final norm and interference it is
``not_learned`` (norm ≤ learned_norm), in ``superposition`` (interference ≥ threshold) or
``dedicated``. Theory (paper.md, E3/E4), with s the density and r the extra feature's
importance relative to the others:

* n=2, m=1: superposition iff 2s/(4−5s) < r < (4−5s)/(2s) (only possible for s < 4/7);
  otherwise r<1 → not_learned, r>1 → dedicated.
* n=3, m=2: s < 4/7: r < 2s/(4−5s) → not_learned, 2s/(4−5s) < r < 1 → superposition,
  r > 1 → dedicated; s ≥ 4/7: r<1 → not_learned, r>1 → dedicated.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

LABELS = ("not_learned", "dedicated", "superposition")
TRIPLE_DENSITY = 4 / 7
THEORY_SHAPES = ((2, 1), (3, 2))
THEORY_KINDS = ("relu_out",)


def lower_boundary(s):
    """r = 2s/(4−5s): below it the extra feature is dropped rather than superposed (s < 4/7)."""
    s = np.asarray(s, dtype=np.float64)
    return 2 * s / (4 - 5 * s)


def upper_boundary(s):
    """r = (4−5s)/(2s): above it (n=2, m=1) the extra feature takes the dimension (s < 4/7)."""
    s = np.asarray(s, dtype=np.float64)
    return (4 - 5 * s) / (2 * s)


def expected_losses_n2m1(s, r) -> dict[str, np.ndarray]:
    """Closed-form expected losses of the three n=2, m=1 solutions (paper.md, E3)."""
    s = np.asarray(s, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return {"not_learned": r * (s / 3 - s ** 2 / 4),
            "dedicated": s / 3 - s ** 2 / 4,
            "superposition": (1 + r) * s ** 2 / 6}


def analytic_label(n: int, m: int, s, r) -> np.ndarray:
    """The optimal phase of the extra feature for (n, m) in :data:`THEORY_SHAPES`.

    ``s``, ``r``: arrays of densities and relative importances (same shape). Returns an object
    array of labels; raises ValueError for other shapes.
    """
    s = np.asarray(s, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    below = s < TRIPLE_DENSITY
    lo = lower_boundary(np.where(below, s, 0.5))  # the curves exist only below 4/7
    outside = np.where(r < 1, "not_learned", "dedicated").astype(object)
    if (n, m) == (2, 1):
        sup = below & (lo < r) & (r < upper_boundary(np.where(below, s, 1.0)))
        return np.where(sup, "superposition", outside).astype(object)
    if (n, m) == (3, 2):
        sup = below & (lo < r) & (r < 1)
        return np.where(sup, "superposition", outside).astype(object)
    raise ValueError(f"no analytic phase boundaries for n={n}, m={m}")


def boundary_curves(n: int, m: int, s_min: float = 1e-4, points: int = 2000) -> list[tuple[np.ndarray, np.ndarray]]:
    """The analytic phase boundaries of (n, m) as polylines [(s [P], r [P]), …] for s in [s_min, 1]."""
    s_low = np.geomspace(s_min, TRIPLE_DENSITY, points)
    if (n, m) == (2, 1):
        return [(s_low, lower_boundary(s_low)), (s_low, upper_boundary(s_low)),
                (np.array([TRIPLE_DENSITY, 1.0]), np.array([1.0, 1.0]))]
    if (n, m) == (3, 2):
        return [(s_low, lower_boundary(s_low)), (np.array([s_min, 1.0]), np.array([1.0, 1.0]))]
    raise ValueError(f"no analytic phase boundaries for n={n}, m={m}")


def boundary_distance(n: int, m: int, s, r) -> np.ndarray:
    """Distance in decades from each (s, r) to the nearest analytic boundary of (n, m).

    Euclidean in (log10 s, log10 r); ``s``, ``r`` arrays of one shape, result likewise.
    """
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    starts, ends = [], []
    for cs, cr in boundary_curves(n, m, s_min=min(1e-4, float(np.nanmin(s)) / 10)):
        line = np.stack([np.log10(cs), np.log10(cr)], axis=1)
        starts.append(line[:-1])
        ends.append(line[1:])
    a, b = np.concatenate(starts), np.concatenate(ends)                 # segments [P, 2]
    ab = b - a
    pts = np.stack([np.log10(s.ravel()), np.log10(r.ravel())], axis=1)  # [C, 2]
    out = np.empty(len(pts))
    for i in range(0, len(pts), 256):
        ap = pts[i:i + 256, None, :] - a[None]                           # [c, P, 2]
        t = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
        near = a[None] + t[..., None] * ab[None]
        out[i:i + 256] = np.sqrt(((pts[i:i + 256, None, :] - near) ** 2).sum(-1)).min(axis=1)
    return out.reshape(np.shape(s))


def classify_extra(norm, interference, learned_norm: float, superposition_interference: float) -> np.ndarray:
    """Phase label of the extra feature from its final ‖W_i‖ and interference (arrays alike)."""
    norm = np.asarray(norm, dtype=np.float64)
    interference = np.asarray(interference, dtype=np.float64)
    return np.where(norm <= learned_norm, "not_learned",
                    np.where(interference >= superposition_interference, "superposition",
                             "dedicated")).astype(object)


CONTINUOUS = ("extra_norm", "extra_interference", "extra_dimensionality", "final_loss", "selection_loss")


def aggregate_cells(points: pd.DataFrame, method: str, rank_by: str = "selection_loss") -> pd.DataFrame:
    """One row per ``cell_id`` from its seeds' rows.

    ``points`` needs ``cell_id``, ``point_id``, ``seed``, ``rank_by`` and the :data:`CONTINUOUS`
    columns it has. Seeds are ranked by ``rank_by`` (``selection_loss``: every seed of a cell
    scored on the same evaluation rows; ``final_loss`` for a store without it). ``best``: the
    lowest-ranked seed's values. ``mean_drop_worst``: the mean over the seeds after dropping the
    highest-ranked one (cells of one seed keep it). Other columns come from the best seed, whose
    ``point_id`` and ``seed`` are kept as provenance; ``n_seeds`` counts the seeds of the cell.
    """
    ranked = points.sort_values(["cell_id", rank_by, "point_id"], na_position="last", kind="stable")
    rank = ranked.groupby("cell_id").cumcount()
    size = ranked.groupby("cell_id")["point_id"].transform("size")
    best = ranked[rank == 0].set_index("cell_id")
    best["n_seeds"] = size[rank == 0].to_numpy()
    if method == "best":
        return best.reset_index()
    if method != "mean_drop_worst":
        raise ValueError(f"unknown aggregate {method!r}")
    kept = ranked[~((rank == size - 1) & (size >= 2))]
    cont = [c for c in CONTINUOUS if c in points]
    means = kept.groupby("cell_id")[cont].mean()
    best[cont] = means.loc[best.index, cont].to_numpy()
    return best.reset_index()


def add_theory(cells: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Add ``analytic_label``, ``boundary_distance``, ``away_from_boundary`` and ``agrees``.

    Theory applies to cells whose ``theory`` column is true and whose (``n_features``,
    ``n_hidden``) is in :data:`THEORY_SHAPES`; it reads ``density`` (s) and
    ``relative_importance`` (r). Elsewhere the new columns are null.
    """
    out = cells.copy()
    out["analytic_label"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    out["boundary_distance"] = np.nan
    for n, m in THEORY_SHAPES:
        sel = (out["theory"].fillna(False).astype(bool) & (out["n_features"] == n)
               & (out["n_hidden"] == m)).to_numpy()
        if not sel.any():
            continue
        s = out.loc[sel, "density"].to_numpy(dtype=np.float64)
        r = out.loc[sel, "relative_importance"].to_numpy(dtype=np.float64)
        out.loc[sel, "analytic_label"] = analytic_label(n, m, s, r)
        out.loc[sel, "boundary_distance"] = boundary_distance(n, m, s, r)
    has = out["analytic_label"].notna()
    out["away_from_boundary"] = has & (out["boundary_distance"] > margin)
    agrees = pd.Series(pd.NA, index=out.index, dtype="boolean")
    away = out["away_from_boundary"]
    agrees[away] = (out.loc[away, "label"] == out.loc[away, "analytic_label"]).to_numpy()
    out["agrees"] = agrees
    return out


def agreement(cells: pd.DataFrame) -> tuple[Optional[float], int]:
    """Fraction of cells away from the boundaries whose empirical label matches theory, and their count."""
    vals = cells["agrees"].dropna() if "agrees" in cells else pd.Series([], dtype="boolean")
    if len(vals) == 0:
        return None, 0
    return float(vals.astype(bool).mean()), int(len(vals))
