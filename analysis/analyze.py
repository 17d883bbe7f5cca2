"""`tms analyze`: from a sweep's store to tables, figures and a report, in two streaming passes.

Pass 0 (schema-2 stores that keep W at every checkpoint) labels the geometry of each point at
each checkpoint. Pass 1 reads every finished point's metric and feature series (a bounded group
of points at a time) and keeps only small results: final values, energy-level counts and final
D_i per point, and the timeline events (as Arrow). Pass 2 streams the final weights for
geometry labels and neuron counts, keeping W only for the points drawn. Everything is written
to a temporary folder beside the output folder and moved into place at the end, so a failure
leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import double_descent, figures, many_features, report, scaling
from .config import AnalysisConfig, PhaseConfig
from .energy import (ZERO, chance_on_level, excess_table, level_counts, level_table, masked_dimensionality,
                     tolerances)
from .errors import AnalysisError
from .geometry import NOT_LEARNED, describe, label, tegum_factors
from .figures import DENSITY_KEY, facets, numeric, subsample
from .neurons import NEURON_KINDS, count_neurons
from .phase import THEORY_KINDS, add_theory, aggregate_cells, agreement, classify_extra
from .store import Store
from .timeline import EVENT_COLUMNS, detect, event_rows

SUMMARY = "summary.json"
FACTOR_FLOATS = ("deviation", "norm_spread", "leak", "d_over_k", "mean_dimensionality", "min_dimensionality",
                 "max_dimensionality")
"""The numeric columns of geometry.parquet, named as the Factor attributes they hold."""


@dataclass
class AnalysisResult:
    """What one analysis wrote: ``files`` (names inside ``out_dir``) and the ``summary`` dict."""

    out_dir: str
    files: list[str]
    summary: dict = field(default_factory=dict)


Labels = dict[str, tuple[np.ndarray, list[str]]]
"""Per point id: the checkpoints [T] with W stored and the geometry label of each."""


def _labels_over_time(store: Store, cfg: AnalysisConfig) -> Labels:
    """Pass 0: the geometry label of every stored checkpoint's W (schema-2 stores)."""
    out: Labels = {}
    for h in store.iter_weight_history(cfg.max_rows_in_memory * 10):
        out[h.point_id] = (h.steps, [label(W, cfg.learned_norm, cfg.geometry) for W in h.W])
    return out


def _finals(store: Store, cfg: AnalysisConfig, labels: Labels
            ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pa.Table]:
    """Pass 1, over every point's series.

    Returns per-point finals (one row per point), their energy-level counts [P, L+1], the
    final masked D_i of every point concatenated [P·n] (in point order), and the events.
    """
    tol = tolerances(cfg.level_tol, cfg.level_gap_fraction)
    rec: dict[str, list] = {k: [] for k in (
        "point_id", "n_features", "final_step", "final_loss", "final_d_star", "extra_norm",
        "extra_interference", "extra_dimensionality", "density", "relative_importance",
        "uniform_setting", "n_drops", "n_matched_drops", "n_transitions", "geometry_from_weights")}
    counts, dims = [], []
    events: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    chunks: list[pa.Table] = []
    for s in store.iter_series(cfg.max_rows_in_memory):
        if len(s.steps) == 0 or s.norm.shape[0] == 0:
            continue
        n = s.norm.shape[1]
        norm, inter, dim = (float(a[-1, -1]) for a in (s.norm, s.interference, s.dimensionality))
        D = masked_dimensionality(s.dimensionality[-1], s.norm[-1], cfg.learned_norm).astype(np.float32)
        counts.append(level_counts(D, tol))
        dims.append(D)
        imp, dens = s.importance.astype(np.float64), s.density.astype(np.float64)
        uniform = bool(n >= 2 and np.allclose(imp[:-1], imp[0], rtol=1e-4)
                       and np.allclose(dens, dens[0], rtol=1e-4) and imp[0] > 0)
        label_steps, point_labels = labels.get(s.point_id, (None, None))
        tl = detect(s.steps, s.loss, s.feature_steps, s.dimensionality, s.norm, cfg.learned_norm, tol,
                    cfg.timeline, label_steps, point_labels)
        rows = event_rows(s.point_id, tl, s.loss)
        for c in EVENT_COLUMNS:
            events[c].extend(rows[c])
        if len(events["point_id"]) >= 50_000:  # keep events compact: Arrow, not Python objects
            chunks.append(_events_table(events))
            events = {c: [] for c in EVENT_COLUMNS}
        for key, val in (("point_id", s.point_id), ("n_features", n), ("final_step", int(s.steps[-1])),
                         ("final_loss", float(s.loss[-1])), ("final_d_star", float(s.d_star[-1])),
                         ("extra_norm", norm), ("extra_interference", inter),
                         ("extra_dimensionality", dim), ("density", float(dens[0])),
                         ("relative_importance", float(imp[-1] / imp[0]) if imp[0] > 0 else np.nan),
                         ("uniform_setting", uniform), ("n_drops", len(tl.drops)),
                         ("n_matched_drops", len(tl.drops) - len(tl.unmatched_drops)),
                         ("n_transitions", sum(not t.learned for t in tl.transitions)),
                         ("geometry_from_weights", tl.from_weights)):
            rec[key].append(val)
    points = pd.DataFrame(rec)
    if points.empty:
        raise AnalysisError(f"{store.location}: no finished point has rows in metrics/ and features/")
    chunks.append(_events_table(events))
    return points, np.stack(counts), np.concatenate(dims), pa.concat_tables(chunks)


def _events_table(events: dict) -> pa.Table:
    types = {"point_id": pa.string(), "kind": pa.string(), "step": pa.int64(), "start_step": pa.int64(),
             "end_step": pa.int64(), "feature": pa.int32(), "from": pa.string(), "to": pa.string(),
             "loss_from": pa.float64(), "loss_to": pa.float64(), "jump": pa.float64(), "matched": pa.bool_(),
             "matched_step": pa.int64()}
    return pa.table({c: pa.array(events[c], type=types[c]) for c in EVENT_COLUMNS})


class _Analysis:
    """One analysis of one store: :meth:`compute` fills the tables; figures and report read them."""

    def __init__(self, sweep_dir: str, cfg: AnalysisConfig, log: Callable[[str], None]):
        self.cfg = cfg
        self.log = log
        self.warnings: list[str] = []
        self.store = Store(sweep_dir, extra_point_columns=tuple(cfg.phase.axes) + (scaling.LAW_KEY,))
        if cfg.phase.axes != PhaseConfig().axes:
            for key in cfg.phase.axes:
                if key not in self.store.points:
                    raise AnalysisError(f"{self.store.location}/points.parquet: missing column '{key}' "
                                        f"(named in --axes)")
        self.swept = [k for k in self.store.swept if k in self.store.points]

    # -- computing ---------------------------------------------------------------------------

    def compute(self) -> None:
        cfg, store = self.cfg, self.store
        self.log(f"reading {len(store.points)} finished points of {sum(store.counts.values())}")
        labels = _labels_over_time(store, cfg)
        if labels:
            self.log(f"labelled the geometry at every checkpoint of {len(labels)} points")
        per_point, level_counts_, self.final_dims, self.events = _finals(store, cfg, labels)
        self.level_counts = pd.DataFrame(level_counts_, index=per_point["point_id"])
        self.per_point_ids = per_point["point_id"].tolist()
        self.per_point_n = per_point["n_features"].tolist()
        plan = store.points.drop(columns=[c for c in per_point if c != "point_id" and c in store.points])
        pts = plan.merge(per_point, on="point_id", how="inner")
        missing = len(store.points) - len(pts)
        if missing:
            self.warnings.append(f"{missing} finished point(s) have no rows in metrics/ or features/")
        self.kind = pts["model.kind"].astype(str) if "model.kind" in pts else pd.Series("", index=pts.index)
        self.ranked_by = "selection_loss"
        if "selection_loss" not in pts or pts["selection_loss"].isna().any():
            self.ranked_by = "final_loss"
            self.warnings.append("the store has no selection_loss (schema 1): seeds are ranked by their "
                                 "final eval loss, each on its own held-out batch")
        cells = aggregate_cells(pts, cfg.phase.aggregate, self.ranked_by)
        cells["label"] = classify_extra(cells["extra_norm"], cells["extra_interference"],
                                        cfg.learned_norm, cfg.phase.superposition_interference)
        self.cells = cells
        self.pts = pts
        self._layout()
        self._weights()
        self._theory()
        self._energy()

    def _layout(self) -> None:
        cfg = self.cfg
        ax_x, ax_y = cfg.phase.axes
        self.phase_axes = (ax_x, ax_y) if numeric(self.cells, ax_x) and numeric(self.cells, ax_y) else None
        swept = self.swept
        gx = ax_x if ax_x in swept else (swept[0] if swept else None)
        gy = ax_y if ax_y in swept and ax_y != gx else next((k for k in swept if k != gx), None)
        self.grid = (gx, gy)
        self.grid_facets = [k for k in swept if k not in (gx, gy)]
        display: set[str] = set()
        self.grids = []
        for facet, sub in facets(self.cells, self.grid_facets)[: cfg.figures.max_facets]:
            xs = subsample(sorted(sub[gx].dropna().unique()), cfg.figures.max_columns) if gx else [None]
            ys = subsample(sorted(sub[gy].dropna().unique()), cfg.figures.max_rows) if gy else [None]
            table = [[None] * len(xs) for _ in ys]
            for _, row in sub.iterrows():
                xv = row[gx] if gx else None
                yv = row[gy] if gy else None
                if xv in xs and yv in ys:
                    table[ys.index(yv)][xs.index(xv)] = row
                    display.add(row["point_id"])
            self.grids.append((facet, xs, ys, table))
        best = self.cells.sort_values(["n_matched_drops", "n_transitions", "n_drops", "point_id"],
                                      ascending=[False, False, False, True])
        self.timeline_ids = list(best["point_id"][: cfg.figures.max_timelines])
        self.keep = display | set(self.timeline_ids)

    def _weights(self) -> None:
        """Pass 2: geometry of every point, neuron counts, and W of the points drawn."""
        cfg, store = self.cfg, self.store
        kind = dict(zip(self.pts["point_id"], self.kind))
        cols: dict[str, list] = {k: [] for k in ("point", "factor", "name", "k", "d", "members", "shape",
                                                  *FACTOR_FLOATS, "uniform")}
        names: dict[str, int] = {}
        ids: list[str] = []
        neu: dict[str, list] = {k: [] for k in ("point_id", "monosemantic", "polysemantic", "dead")}
        self.weights: dict[str, tuple] = {}
        self.described: dict[str, str] = {}
        n_hidden: dict[str, int] = {}
        for w in store.iter_weights():
            if w.point_id not in kind:  # no series: not analysed
                continue
            factors, unlearned = tegum_factors(w.W, cfg.learned_norm, cfg.geometry)
            self.described[w.point_id] = describe(factors, len(unlearned))
            n_hidden[w.point_id] = w.W.shape[0]
            rows = [(f.name, f.k, f.d, f.features, f.shape, *(getattr(f, a) for a in FACTOR_FLOATS), f.uniform)
                    for f in factors]
            if unlearned:
                rows.append((NOT_LEARNED, len(unlearned), 0, tuple(unlearned), "", np.inf, 0.0, 0.0, 0.0, 0.0,
                             0.0, 0.0, True))
            columns = list(zip(*rows)) if rows else [()] * 13
            cols["point"].append(np.full(len(rows), len(ids), np.int64))
            cols["factor"].append(np.arange(len(rows), dtype=np.int32))
            for key, val in zip(("name", "shape"), (columns[0], columns[4])):
                cols[key].append(np.array([names.setdefault(x, len(names)) for x in val], np.int32))
            for key, val, typ in (("k", columns[1], np.int32), ("d", columns[2], np.int32),
                                  *((a, columns[5 + j], np.float64) for j, a in enumerate(FACTOR_FLOATS)),
                                  ("uniform", columns[12], bool)):
                cols[key].append(np.array(val, dtype=typ))
            cols["members"].append(np.concatenate([np.asarray(m, np.int32) for m in columns[3]]))
            ids.append(w.point_id)
            if kind.get(w.point_id) in NEURON_KINDS:
                c = count_neurons(w.W, kind[w.point_id], cfg.geometry)
                for key, val in zip(neu, (w.point_id, c.monosemantic, c.polysemantic, c.dead)):
                    neu[key].append(val)
            if w.point_id in self.keep:
                self.weights[w.point_id] = (w.W, w.W2)
        for path in store.missing_weights:
            self.warnings.append(f"{path}: missing; geometry skipped for its points")
        self.geometry = self._geometry_table(cols, names, ids)
        info = self.pts[["point_id", "cell_id", "seed", *self.swept]]
        self.neurons = info.merge(pd.DataFrame(neu), on="point_id", how="inner") if neu["point_id"] else None
        if "model.n_hidden" in self.cells:
            self.cells["n_hidden"] = pd.to_numeric(self.cells["model.n_hidden"], errors="coerce")
        else:
            self.cells["n_hidden"] = self.cells["point_id"].map(pd.Series(n_hidden, dtype="float64"))
        self.cells["geometry"] = self.cells["point_id"].map(self.described)

    def _geometry_table(self, cols: dict, names: dict, ids: list[str]) -> pa.Table:
        """geometry.parquet: one row per (point, factor), with the point's settings.

        Values repeated per factor (point id, settings, names) are dictionary-encoded.
        """
        def cat(key: str, dtype) -> np.ndarray:
            return np.concatenate(cols.pop(key)) if ids else np.zeros(0, dtype)

        point = pa.array(cat("point", np.int64).astype(np.int32))
        per_point = (self.pts.set_index("point_id").loc[ids, ["cell_id", "seed", *self.swept]]
                     .reset_index())
        out: dict[str, pa.Array] = {}
        for col in per_point.columns:
            values = pa.Array.from_pandas(per_point[col])
            out[col] = (pa.DictionaryArray.from_arrays(point, values) if pa.types.is_string(values.type)
                        or pa.types.is_large_string(values.type) else values.take(point))
        k = cat("k", np.int32)
        out["factor"] = pa.array(cat("factor", np.int32))
        for key in ("name", "shape"):
            out[key] = pa.DictionaryArray.from_arrays(pa.array(cat(key, np.int32)), pa.array(list(names), pa.string()))
        out["k"] = pa.array(k)
        out["d"] = pa.array(cat("d", np.int32))
        offsets = np.concatenate([[0], np.cumsum(k)]).astype(np.int32)   # a factor lists k features
        out["features"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cat("members", np.int32)))
        for key in FACTOR_FLOATS:
            out[key] = pa.array(cat(key, np.float64))
        out["uniform"] = pa.array(cat("uniform", bool))
        out["geometry"] = pa.DictionaryArray.from_arrays(
            point, pa.array([self.described[i] for i in ids], pa.string()))
        best = set(self.cells["point_id"])
        out["best"] = pa.array(np.array([i in best for i in ids], dtype=bool)).take(point)
        return pa.table(out)

    def _theory(self) -> None:
        cells = self.cells
        kind = cells["model.kind"].astype(str) if "model.kind" in cells else pd.Series("", index=cells.index)
        cells["theory"] = kind.isin(THEORY_KINDS) & cells["uniform_setting"].astype(bool)
        cells = add_theory(cells, self.cfg.phase.boundary_margin)
        self.cells = cells.sort_values([*self.swept, "cell_id"], kind="stable").reset_index(drop=True)
        self.agreement = agreement(self.cells)

    def _energy(self) -> None:
        """The energy-level table, per density and the other swept keys (seeds pooled)."""
        self.energy = None
        pts = self.pts
        if DENSITY_KEY not in pts:
            pts = pts.assign(**{DENSITY_KEY: pts["density"]})
        if pts[DENSITY_KEY].nunique() < 2:
            return
        self.energy_facets = [k for k in self.swept if k != DENSITY_KEY]
        # the figure pools seeds along density: it fits when density is the only data key swept
        self.energy_figure = DENSITY_KEY in self.swept and not any(
            k.startswith("data.") for k in self.energy_facets)
        keys = pts[self.energy_facets + [DENSITY_KEY]]
        counts = self.level_counts.loc[pts["point_id"]].to_numpy()
        self.energy = level_table(keys, counts)
        self.energy_points = pts
        self.energy_chance = None
        if "model.n_hidden" in pts:
            m = pd.to_numeric(pts["model.n_hidden"], errors="coerce").to_numpy()
            learned = counts.sum(axis=1) - counts[:, ZERO]
            chance = np.array([chance_on_level(int(mi), int(k), self.cfg.level_tol, self.cfg.level_gap_fraction)
                               if np.isfinite(mi) else np.nan for mi, k in zip(m, learned)])
            self.energy_chance = excess_table(keys, counts, chance)

    # -- writing -----------------------------------------------------------------------------

    def phase_table(self) -> pd.DataFrame:
        lead = [*self.swept] + [c for c in ("model.kind", "model.n_features", "model.n_hidden")
                                if c in self.cells and c not in self.swept]
        cols = lead + ["cell_id", "n_seeds", "point_id", "seed", "label", "analytic_label", "agrees",
                       "away_from_boundary", "boundary_distance", "extra_norm", "extra_interference",
                       "extra_dimensionality", "final_loss", "selection_loss", "density",
                       "relative_importance", "n_features", "n_hidden", "geometry"]
        return self.cells.reindex(columns=cols)

def _write_table(frame, path: str) -> None:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path)


def _default_out(sweep_dir: str) -> str:
    if "://" in sweep_dir:
        raise AnalysisError(f"{sweep_dir}: a remote store needs --out DIR (a local folder)")
    return os.path.join(sweep_dir, "analysis")


def analyze(sweep_dir: str, out_dir: Optional[str] = None, config: AnalysisConfig = AnalysisConfig(),
            log: Callable[[str], None] = lambda msg: None) -> AnalysisResult:
    """Analyse the sweep at ``sweep_dir`` and write the results to ``out_dir``.

    Default ``out_dir``: ``<sweep_dir>/analysis``. Raises :class:`AnalysisError` for bad input
    (nothing is then written).
    """
    out = os.path.abspath(out_dir or _default_out(sweep_dir))
    run = _Analysis(sweep_dir, config, log)
    run.compute()
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".analysis-", dir=parent)
    try:
        files = ["phase.parquet", "events.parquet", "geometry.parquet"]
        _write_table(run.phase_table(), os.path.join(tmp, "phase.parquet"))
        _write_table(run.events, os.path.join(tmp, "events.parquet"))
        _write_table(run.geometry, os.path.join(tmp, "geometry.parquet"))
        if run.energy is not None:
            _write_table(run.energy, os.path.join(tmp, "energy.parquet"))
            files.append("energy.parquet")
        if run.energy is not None and run.energy_chance is not None:
            _write_table(run.energy_chance, os.path.join(tmp, "energy_chance.parquet"))
            files.append("energy_chance.parquet")
        if run.neurons is not None:
            _write_table(run.neurons, os.path.join(tmp, "neurons.parquet"))
            files.append("neurons.parquet")
        log("drawing figures")
        figs = figures.draw(run, tmp) + [f for extra in (double_descent, scaling, many_features) for f in extra.draw(run, tmp)]
        files += [f for fig in figs for f in fig.files]
        score, count = run.agreement
        summary = {
            "sweep": run.store.name, "store": sweep_dir, "points": run.store.counts,
            "analysed_points": int(len(run.pts)), "cells": int(len(run.cells)), "swept": run.swept,
            "phase_agreement": score, "phase_agreement_cells": count, "seeds_ranked_by": run.ranked_by,
            "timelines_from_weights": int(run.pts["geometry_from_weights"].sum()),
            "energy_levels": _energy_summary(run),
            "unmatched_drops": _unmatched(run.events),
            "labels": {str(k): int(v) for k, v in run.cells["label"].value_counts().sort_index().items()},
            "events": {str(k): int(v) for k, v in sorted(
                (d["values"], d["counts"]) for d in pc.value_counts(run.events.column("kind")).to_pylist())},
            "warnings": run.warnings, "config": asdict(config),
            "figures": [{"section": f.section, "title": f.title, "files": f.files} for f in figs],
        }
        files += ["report.html", SUMMARY]
        summary["files"] = files
        report.write(os.path.join(tmp, "report.html"), run, summary, figs)
        with open(os.path.join(tmp, SUMMARY), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        _publish(tmp, out, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return AnalysisResult(out, files, summary)


def _energy_summary(run) -> Optional[dict]:
    """Learned features on a nonzero level over the whole sweep, against chance."""
    e = getattr(run, "energy_chance", None) if run.energy is not None else None
    if e is None or e["learned"].sum() == 0:
        return None
    learned = e["learned"].to_numpy(float)
    on = float(np.nansum(e["on_level"].to_numpy(float) * learned) / learned.sum())
    chance = float(np.nansum(e["chance"].to_numpy(float) * learned) / learned.sum())
    return {"learned_features": int(learned.sum()), "on_level": on, "chance": chance, "excess": on - chance}


def _unmatched(events: pa.Table) -> dict:
    """How many loss drops there are, how many leave the geometry unchanged, and examples (point@step)."""
    ev = events.filter(pc.equal(events.column("kind"), "drop")).to_pandas()
    lone = ev[~ev["matched"].astype(bool)]
    return {"drops": int(len(ev)), "without_geometry_change": int(len(lone)),
            "examples": [f"{p}@{int(s)}" for p, s in zip(lone["point_id"][:20], lone["step"][:20])]}


def _publish(tmp: str, out: str, files: list[str]) -> None:
    """Move the new files into ``out``; remove files a previous analysis listed but this one did not."""
    os.makedirs(out, exist_ok=True)
    old: list[str] = []
    try:
        with open(os.path.join(out, SUMMARY)) as f:
            old = list(json.load(f).get("files", []))
    except (OSError, ValueError, AttributeError):
        old = []
    for name in files:
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    for name in set(old) - set(files):
        if os.path.basename(name) == name:
            try:
                os.remove(os.path.join(out, name))
            except OSError:
                pass
