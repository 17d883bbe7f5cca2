"""Which of the paper's pictures fit a sweep, and drawing them from an analysis run.

:func:`draw` takes a computed run (see :mod:`analysis.analyze`) and writes every figure that
fits: phase diagrams (two numeric swept axes), energy levels (density swept), WᵀW / directions /
neurons grids and geometry bars (one panel per cell's chosen seed), and timelines.
Figures of one kind are split by the other swept keys ("facets") into predictably named files:
``<kind>.png`` or ``<kind>_<key>-<value>….png``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import plots
from .energy import masked_dimensionality, tolerances
from .neurons import NEURON_KINDS
from .phase import THEORY_SHAPES, agreement

DENSITY_KEY = "data.density"
IMPORTANCE_KEY = "data.extra_importance"


@dataclass
class Figure:
    """One figure written: its report section, title and file names."""

    section: str
    title: str
    files: list[str]


def subsample(values: list, k: int) -> list:
    """At most ``k`` of ``values``, evenly spaced, ends kept."""
    if len(values) <= k:
        return list(values)
    return [values[i] for i in np.unique(np.linspace(0, len(values) - 1, k).round().astype(int))]


def fmt(v) -> str:
    """A setting value as written in titles and file names."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def short(key: str) -> str:
    """The last part of a dotted key."""
    return key.rsplit(".", 1)[-1]


def slug(facet: dict) -> str:
    """File-name suffix of a facet, e.g. ``n_features-2_n_hidden-1``."""
    text = "_".join(f"{short(k)}-{fmt(v)}" for k, v in facet.items())
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def facets(frame: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Split ``frame`` by the values of ``keys``: [({key: value}, rows), …]."""
    if not keys:
        return [({}, frame)]
    out = []
    for vals, sub in frame.groupby(keys, sort=True, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        out.append((dict(zip(keys, vals)), sub))
    return out


def facet_title(facet: dict) -> str:
    """A facet for titles, e.g. ``n_features=2, n_hidden=1``."""
    return ", ".join(f"{short(k)}={fmt(v)}" for k, v in facet.items())


def numeric(frame: pd.DataFrame, key: str) -> bool:
    """``key`` is a numeric column of ``frame`` with at least two values."""
    return key in frame and pd.api.types.is_numeric_dtype(frame[key]) and frame[key].nunique() >= 2


def draw(run, out: str) -> list[Figure]:
    """Write every figure that fits the analysed sweep ``run`` into ``out``; return them."""
    figs: list[Figure] = []
    fc = run.cfg.figures

    def emit(section: str, title: str, stem: str, fig) -> None:
        figs.append(Figure(section, title, plots.save(fig, out, stem, fc.formats, fc.dpi)))

    if run.phase_axes:
        ax_x, ax_y = run.phase_axes
        facet_keys = [k for k in run.swept if k not in run.phase_axes]
        for facet, sub in facets(run.cells, facet_keys)[: fc.max_facets]:
            shapes = set(zip(sub["n_features"], sub["n_hidden"]))
            theory = None
            if {ax_x, ax_y} == {DENSITY_KEY, IMPORTANCE_KEY} and len(shapes) == 1 \
                    and next(iter(shapes)) in THEORY_SHAPES and sub["theory"].all():
                n, m = next(iter(shapes))
                theory = (int(n), int(m), "x" if ax_x == DENSITY_KEY else "y")
            score, count = agreement(sub)
            title = f"{run.store.name} phase diagram" + (f" — {facet_title(facet)}" if facet else "")
            if score is not None:
                title += f" — agreement with theory {score:.0%} of {count} cells"
            disagree = ~sub["agrees"].fillna(True).astype(bool).to_numpy()
            fig = plots.phase_figure(sub[ax_x].to_numpy(float), sub[ax_y].to_numpy(float),
                                     sub["label"].to_numpy(), sub["extra_norm"].to_numpy(),
                                     sub["extra_interference"].to_numpy(), ax_x, ax_y, title,
                                     theory, disagree)
            emit("phase", title, "phase" + (f"_{slug(facet)}" if facet else ""), fig)
    if run.energy is not None and run.energy_figure:
        offsets = dict(zip(run.per_point_ids, np.cumsum([0, *run.per_point_n[:-1]])))
        for facet, p in facets(run.energy_points, run.energy_facets)[: fc.max_facets]:
            start = p["point_id"].map(offsets).to_numpy()
            n = p["n_features"].to_numpy()
            D = np.concatenate([run.final_dims[a:a + k] for a, k in zip(start, n)])
            title = f"{run.store.name} energy levels" + (f" — {facet_title(facet)}" if facet else "")
            chance = _chance_line(run, facet)
            fig = plots.energy_figure(p[DENSITY_KEY].to_numpy(float), p["final_d_star"].to_numpy(float),
                                      np.repeat(p[DENSITY_KEY].to_numpy(float), n), D,
                                      tolerances(run.cfg.level_tol, run.cfg.level_gap_fraction),
                                      title + (f"\n{chance}" if chance else ""))
            emit("energy", title, "energy" + (f"_{slug(facet)}" if facet else ""), fig)
    _grid_figures(run, emit)
    _timelines(run, emit)
    return figs


def _chance_line(run, facet: dict) -> str:
    """ "learned features on a level: X % (random W: Y %)" for one facet of the energy table."""
    e = run.energy_chance
    if e is None:
        return ""
    for key, val in facet.items():
        e = e[e[key] == val]
    learned = e["learned"].to_numpy(float)
    if learned.sum() == 0:
        return ""
    on = np.nansum(e["on_level"].to_numpy(float) * learned) / learned.sum()
    chance = np.nansum(e["chance"].to_numpy(float) * learned) / learned.sum()
    return f"learned features on a level: {on:.0%} (random W of the same m and count: {chance:.0%})"


def _grid_figures(run, emit) -> None:
    """WᵀW, directions (m = 2), neurons (relu_hidden, abs) and geometry bars, one per facet."""
    fc = run.cfg.figures
    gx, gy = run.grid
    kind = dict(zip(run.pts["point_id"], run.kind))
    best = run.geometry.filter(run.geometry.column("best")).select(["point_id", "name", "k"]).to_pandas()
    for facet, xs, ys, table in run.grids:
        suffix = f"_{slug(facet)}" if facet else ""
        where = f" — {facet_title(facet)}" if facet else ""
        keep = [i for i, r in enumerate(table) if any(c is not None and c["point_id"] in run.weights
                                                      for c in r)]
        if not keep:
            continue
        cols = [f"{short(gx)}={fmt(v)}" for v in xs] if gx else []
        rows_l = [f"{short(gy)}={fmt(ys[i])}" for i in keep] if gy else []

        def panels(title_fn):
            out = []
            for i in keep:
                line = []
                for c in table[i]:
                    if c is None or c["point_id"] not in run.weights:
                        line.append(None)
                        continue
                    W, W2 = run.weights[c["point_id"]]
                    line.append(plots.Panel(title_fn(c), W, W2, kind.get(c["point_id"], "")))
                out.append(line)
            return out

        grid_panels = panels(lambda c: run.described.get(c["point_id"], ""))
        emit("pictures", f"WᵀW and feature norms{where}", f"wtw{suffix}",
             plots.wtw_grid(grid_panels, f"{run.store.name}: WᵀW (RdBu) and ‖W_i‖ coloured by "
                            f"√interference (best seed per cell){where}", fc.max_features_shown,
                            cols, rows_l))
        shown = [p for line in grid_panels for p in line if p is not None]
        if all(p.W.shape[0] == 2 for p in shown):
            emit("pictures", f"feature directions{where}", f"directions{suffix}",
                 plots.directions_grid(grid_panels, f"{run.store.name}: columns of W in the "
                                       f"hidden plane{where}", cols, rows_l))
        if all(p.kind in NEURON_KINDS for p in shown) and run.neurons is not None:
            counts = run.neurons.set_index("point_id")

            def neuron_title(c):
                n = counts.loc[c["point_id"]]
                return f"mono {n.monosemantic} · poly {n.polysemantic} · dead {n.dead}"

            emit("pictures", f"neurons{where}", f"neurons{suffix}",
                 plots.neurons_grid(panels(neuron_title), f"{run.store.name}: neuron × feature "
                                    f"weights (best seed per cell){where}", cols, rows_l))
        bars = []
        for i in keep:
            ticks, counts_ = [], []
            for xv, c in zip(xs, table[i]):
                g = best[best["point_id"] == c["point_id"]] if c is not None else best.iloc[:0]
                if g.empty:
                    continue
                ticks.append(fmt(xv) if gx else str(c["point_id"])[:6])
                counts_.append(g.groupby("name")["k"].sum().to_dict())
            if ticks:
                bars.append((f"{short(gy)}={fmt(ys[i])}" if gy else "", ticks, counts_))
        if bars:
            emit("geometry", f"geometry labels{where}", f"geometry{suffix}",
                 plots.geometry_bars(bars, gx or "point", f"{run.store.name}: features per "
                                     f"geometry (best seed per cell){where}"))

def _timelines(run, emit) -> None:
    """One timeline figure per chosen point, its series read again from the store."""
    if not run.timeline_ids:
        return
    ev = run.events.filter(pc.is_in(run.events.column("point_id"),
                                      pa.array(run.timeline_ids, pa.string()))).to_pandas()
    info = run.cells.set_index("point_id")
    for s in run.store.iter_series(run.cfg.max_rows_in_memory, set(run.timeline_ids)):
        e = ev[ev["point_id"] == s.point_id]
        D = masked_dimensionality(s.dimensionality, s.norm, run.cfg.learned_norm)
        plateaus = [(r.start_step, r.end_step) for r in e[e.kind == "plateau"].itertuples()]
        drops = [(r.start_step, r.end_step, r.step, bool(r.matched)) for r in e[e.kind == "drop"].itertuples()]
        marks = []
        for r in e[e.kind.isin(["learned", "transition"])].itertuples():
            t = int(np.clip(np.searchsorted(s.feature_steps, r.step), 0, len(s.feature_steps) - 1))
            marks.append((r.step, float(D[t, int(r.feature)]), r.kind == "learned", bool(r.matched)))
        changes = [(r.step, str(r.to), bool(r.matched)) for r in e[e.kind == "geometry"].itertuples()]
        row = info.loc[s.point_id]
        setting = ", ".join(f"{short(k)}={fmt(row[k])}" for k in run.swept)
        title = (f"{run.store.name} point {s.point_id} ({setting}, seed {row['seed']})\n"
                 f"final geometry from W: {run.described.get(s.point_id, 'weights not stored')}")
        fig = plots.timeline_figure(s.steps, s.loss, s.feature_steps, D, plateaus, drops, marks, changes, title)
        emit("timeline", f"timeline of {s.point_id} ({setting})", f"timeline_{s.point_id}", fig)
