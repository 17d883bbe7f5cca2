"""The paper's pictures, drawn with matplotlib's Agg canvas (no pyplot state, no display).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save` writes it as PNG and
SVG. Colours: phases not_learned grey, dedicated blue, superposition red; WᵀW on RdBu (−1…1);
norm bars by √interference clamped to [0, 1] (black: none, yellow: ≥1), as in the paper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .energy import LEVELS
from .geometry import feature_metrics
from .neurons import neuron_features, rescale
from .phase import LABELS, boundary_curves

PHASE_COLOURS = {"not_learned": "#d9d9d9", "dedicated": "#3b75af", "superposition": "#d1495b"}
_BLUE = np.array([0x3b, 0x75, 0xaf]) / 255
_RED = np.array([0xd1, 0x49, 0x5b]) / 255
INTERFERENCE_CMAP = matplotlib.colormaps["inferno"].resampled(256)
GEOMETRY_COLOURS = {"dedicated": "#3b75af", "antipodal pair": "#d1495b", "triangle": "#edae49",
                    "tetrahedron": "#00798c", "pentagon": "#8f2d56", "square antiprism": "#66a182",
                    "not learned": "#d9d9d9"}


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out_dir: str, stem: str, formats: Sequence[str], dpi: int) -> list[str]:
    """Write ``fig`` as ``<stem>.<fmt>`` for each format (png always); return the file names."""
    names = []
    for fmt in dict.fromkeys(["png", *formats]):
        name = f"{stem}.{fmt}"
        fig.savefig(os.path.join(out_dir, name), dpi=dpi, format=fmt,
                    metadata={"Software": None} if fmt == "png" else {"Date": None})
        fig.set_layout_engine("none")  # keep the first layout: the other formats reuse it
        names.append(name)
    return names


def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    v = np.log10(values) if log else values.astype(np.float64)
    if len(v) == 1:
        half = 0.5 if log else max(abs(v[0]) * 0.5, 0.5)
        e = np.array([v[0] - half, v[0] + half])
    else:
        mid = (v[1:] + v[:-1]) / 2
        e = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return 10 ** e if log else e


def use_log(values: np.ndarray) -> bool:
    """Log axis for positive values spanning at least a factor of 10."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.all(v > 0) and v.max() / v.min() >= 10)


def continuous_colour(norm: np.ndarray, interference: np.ndarray) -> np.ndarray:
    """RGB [..., 3]: white when not learned, blue when dedicated, red in superposition.

    Lightness follows ‖W_i‖ (clamped to [0, 1]); hue √interference (clamped to [0, 1]).
    """
    a = np.clip(np.nan_to_num(norm), 0, 1)[..., None]
    q = np.clip(np.sqrt(np.clip(np.nan_to_num(interference), 0, None)), 0, 1)[..., None]
    rgb = (1 - a) + a * ((1 - q) * _BLUE + q * _RED)
    return np.where(np.isnan(np.asarray(norm, dtype=np.float64))[..., None], 1.0, rgb)


def phase_figure(x: np.ndarray, y: np.ndarray, label: np.ndarray, norm: np.ndarray,
                 interference: np.ndarray, x_name: str, y_name: str, title: str,
                 theory: Optional[tuple[int, int, str]] = None,
                 disagree: Optional[np.ndarray] = None) -> Figure:
    """Phase diagram: discrete labels (left) and the continuous map (right) over two axes.

    ``x``, ``y``, ``label``, ``norm``, ``interference``, ``disagree`` [C]: one entry per cell.
    ``theory``: (n, m, which axis is the density: "x" or "y") to overlay the analytic
    boundaries; cells in ``disagree`` are crossed.
    """
    xs, ys = np.unique(x), np.unique(y)
    xi, yi = np.searchsorted(xs, x), np.searchsorted(ys, y)
    logx, logy = use_log(xs), use_log(ys)
    codes = np.full((len(ys), len(xs)), np.nan)
    codes[yi, xi] = [LABELS.index(v) for v in label]
    rgb = np.ones((len(ys), len(xs), 3))
    rgb[yi, xi] = continuous_colour(np.asarray(norm, float), np.asarray(interference, float))
    fig = new_figure(11.5, 4.9)
    axes = fig.subplots(1, 3, width_ratios=(1, 1, 0.16))
    key = axes[2]
    ex, ey = _edges(xs, logx), _edges(ys, logy)
    cmap = ListedColormap([PHASE_COLOURS[k] for k in LABELS])
    axes[0].pcolormesh(ex, ey, np.ma.masked_invalid(codes), cmap=cmap, vmin=-0.5, vmax=2.5)
    axes[1].pcolormesh(ex, ey, rgb)
    for ax, sub in zip(axes[:2], ("phase of the extra feature", "‖W‖ (lightness) × √interference (hue)")):
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
        ax.set_xlim(ex[0], ex[-1])
        ax.set_ylim(ey[0], ey[-1])
        ax.set_xlabel(x_name)
        ax.set_ylabel(y_name)
        ax.set_title(sub, fontsize=10)
        if theory is not None:
            n, m, density_axis = theory
            dens = np.asarray(xs if density_axis == "x" else ys, dtype=np.float64)
            s_min = min(1e-4, float(dens[dens > 0].min()) / 10) if np.any(dens > 0) else 1e-4
            for cs, cr in boundary_curves(n, m, s_min=s_min):
                px, py = (cs, cr) if density_axis == "x" else (cr, cs)
                ax.plot(px, py, color="black", lw=1.8)
    if disagree is not None and np.any(disagree):
        d = np.asarray(disagree, bool)
        axes[0].scatter(np.asarray(x)[d], np.asarray(y)[d], marker="x", color="black", s=30, lw=1.2)
    handles = [Patch(color=PHASE_COLOURS[k], label=k) for k in LABELS]
    if theory is not None:
        handles.append(Line2D([], [], color="black", lw=1.8, label=f"theory n={theory[0]}, m={theory[1]}"))
    if disagree is not None and np.any(disagree):
        handles.append(Line2D([], [], color="black", marker="x", lw=0, label="disagrees with theory"))
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    g = np.linspace(0, 1, 24)
    key.imshow(continuous_colour(g[None, :], (g[:, None] ** 2)), origin="lower", extent=(0, 1, 0, 1))
    key.set_box_aspect(1)
    key.set_xticks([0, 1], ["0", "1"], fontsize=7)
    key.set_yticks([0, 1], ["0", "1"], fontsize=7)
    key.set_xlabel("‖W‖ of the\nextra feature", fontsize=7)
    key.set_ylabel("√interference", fontsize=7)
    key.set_title("key", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def energy_figure(density: np.ndarray, d_star: np.ndarray, feat_density: np.ndarray,
                  feat_dim: np.ndarray, tol: np.ndarray, title: str) -> Figure:
    """D* against 1/(1−S) (log axis) with each feature's D_i as dots and the energy levels.

    ``density``, ``d_star`` [P]: one per point; ``feat_density``, ``feat_dim`` [F]: one per
    (point, feature), D_i already masked (0 when not learned); ``tol`` [len(LEVELS)]: each
    level's tolerance, drawn as a band and labelled with the level's geometry.
    """
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    inv = 1 / np.asarray(feat_density, float)
    rng = np.random.default_rng(0)
    jitter = 10 ** rng.uniform(-0.03, 0.03, size=inv.shape)
    on = np.zeros(len(feat_dim), dtype=bool)
    for lv, t in zip(LEVELS[:-1], tol[:-1]):
        ax.axhspan(lv.value - t, lv.value + t, color=GEOMETRY_COLOURS[lv.name], alpha=0.18, lw=0)
        ax.annotate(f"{lv.text} {lv.name}", (1.0, lv.value), xycoords=("axes fraction", "data"),
                    xytext=(3, 0), textcoords="offset points", fontsize=7, va="center",
                    color=GEOMETRY_COLOURS[lv.name])
        on |= np.abs(np.asarray(feat_dim, float) - lv.value) <= t
    learned = np.asarray(feat_dim, float) > 0
    ax.scatter((inv * jitter)[learned & on], np.asarray(feat_dim)[learned & on], s=10, alpha=0.6,
               color="#3b75af", lw=0, label="D_i on a level")
    ax.scatter((inv * jitter)[~(learned & on)], np.asarray(feat_dim)[~(learned & on)], s=10, alpha=0.35,
               color="#999999", lw=0, label="D_i between levels or not learned")
    dens = np.asarray(density, float)
    xs = np.unique(dens)
    med = [np.nanmedian(np.asarray(d_star, float)[dens == v]) for v in xs]
    order = np.argsort(1 / xs)
    ax.plot((1 / xs)[order], np.asarray(med)[order], color="black", lw=2, marker="o", ms=4,
            label="D* = m/‖W‖_F² (median over seeds)")
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.1)
    ax.set_xlabel("1/(1−S) = 1/density")
    ax.set_ylabel("dimensions per feature")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return fig


@dataclass
class Panel:
    """One model in a grid figure: a title (its geometry) and its final weights
    (``W`` [m, n], ``W2`` [n, m] or None) and model kind."""

    title: str
    W: np.ndarray
    W2: Optional[np.ndarray] = None
    kind: str = ""


def _grid(panels: list[list[Optional[Panel]]], draw: Callable, col_w: float, row_h: float, title: str,
          col_labels: Sequence[str], row_labels: Sequence[str], inner_rows: int = 1,
          ratios: Sequence[float] = (1,)) -> Figure:
    rows, cols = len(panels), max(len(r) for r in panels)
    fig = new_figure(max(3.0, col_w * cols + 0.4), row_h * rows + 0.7)
    outer = fig.add_gridspec(rows, cols)
    for i, row in enumerate(panels):
        for j, panel in enumerate(row):
            if panel is None:
                continue
            sub = outer[i, j].subgridspec(inner_rows, 1, height_ratios=ratios)
            axes = [fig.add_subplot(sub[k]) for k in range(inner_rows)]
            draw(axes, panel)
            head = f"{col_labels[j]}\n" if col_labels and (i == 0 or panels[i - 1][j] is None) else ""
            axes[0].set_title(head + panel.title, fontsize=6.5)
            if j == 0 or row[j - 1] is None:
                axes[0].set_ylabel(row_labels[i] if row_labels else "", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def _wtw_panel(axes, panel: Panel, max_features: int) -> None:
    W = panel.W[:, :max_features]
    norm, interference, _ = feature_metrics(panel.W)
    norm, interference = norm[:max_features], interference[:max_features]
    ax_h, ax_b = axes
    ax_h.imshow(W.T @ W, cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    ax_h.set_xticks([])
    ax_h.set_yticks([])
    colours = INTERFERENCE_CMAP(np.clip(np.sqrt(interference), 0, 1) * 0.9)
    ax_b.barh(np.arange(len(norm)), norm, color=colours, height=0.8)
    ax_b.set_ylim(len(norm) - 0.5, -0.5)
    top = max(1.05, float(norm.max()) * 1.05 if len(norm) else 1.05)
    ax_b.set_xlim(0, top)
    ax_b.set_xticks([0, 1] if top < 2 else [0, round(top / 2, 1)])
    ax_b.set_yticks([])
    ax_b.tick_params(labelsize=6)
    ax_b.set_xlabel("‖W_i‖", fontsize=6, labelpad=1)


def wtw_grid(panels: list[list[Optional[Panel]]], title: str, max_features: int,
             col_labels: Sequence[str] = (), row_labels: Sequence[str] = ()) -> Figure:
    """WᵀW heatmaps over per-feature norm bars coloured by √interference, one per model."""
    return _grid(panels, lambda axes, p: _wtw_panel(axes, p, max_features), 1.8, 2.9, title,
                 col_labels, row_labels, inner_rows=2, ratios=(1.2, 0.8))


def _directions_panel(axes, panel: Panel) -> None:
    ax = axes[0]
    W = panel.W
    n = W.shape[1]
    colours = matplotlib.colormaps["viridis"](np.linspace(0.95, 0.05, n))
    for i in range(n):
        ax.plot([0, W[0, i]], [0, W[1, i]], color=colours[i], lw=1.6)
        ax.plot(W[0, i], W[1, i], "o", color=colours[i], ms=3)
    lim = max(1.1, float(np.abs(W).max()) * 1.1)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def directions_grid(panels: list[list[Optional[Panel]]], title: str, col_labels: Sequence[str] = (),
                    row_labels: Sequence[str] = ()) -> Figure:
    """The columns of W drawn as arrows in the plane (m = 2), coloured by importance rank
    (yellow: feature 0, the most important)."""
    return _grid(panels, _directions_panel, 1.8, 2.1, title, col_labels, row_labels)


def _neurons_panel(axes, panel: Panel) -> None:
    ax = axes[0]
    W, _ = rescale(panel.W, panel.W2) if panel.kind == "abs" else (panel.W, None)
    used = neuron_features(panel.W, panel.kind)
    ax.imshow(W, cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
    per = used.sum(axis=1)
    ax.set_yticks(np.arange(W.shape[0]), ["P" if c >= 2 else "M" if c == 1 else "·" for c in per], fontsize=5)
    ax.set_xticks([])
    ax.set_xlabel("feature", fontsize=6, labelpad=1)


def neurons_grid(panels: list[list[Optional[Panel]]], title: str, col_labels: Sequence[str] = (),
                 row_labels: Sequence[str] = ()) -> Figure:
    """Neuron × feature weights (rows: neurons, M = monosemantic, P = polysemantic, · = dead)."""
    return _grid(panels, _neurons_panel, 2.2, 2.4, title, col_labels, row_labels)


def geometry_bars(rows: list[tuple[str, list[str], list[dict[str, int]]]], x_name: str, title: str) -> Figure:
    """Stacked bars of how many features sit in each geometry, along one swept axis.

    ``rows``: (row title, x tick labels, per tick {geometry name: feature count}).
    """
    names = sorted({k for _, _, counts in rows for c in counts for k in c},
                   key=lambda k: (list(GEOMETRY_COLOURS).index(k) if k in GEOMETRY_COLOURS else 99, k))
    other = matplotlib.colormaps["tab20b"]  # olive, brown, purple shades: unlike the named ones
    extra = [k for k in names if k not in GEOMETRY_COLOURS]
    colours = {k: GEOMETRY_COLOURS.get(k) or other((4 * extra.index(k) + 1) % 20 / 20) for k in names}
    fig = new_figure(max(5.0, 0.5 * max(len(t) for _, t, _ in rows) + 3), 2.3 * len(rows) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(rows), 1, squeeze=False)[:, 0])
    for ax, (row_title, ticks, counts) in zip(axes, rows):
        bottom = np.zeros(len(ticks))
        for k in names:
            h = np.array([c.get(k, 0) for c in counts], dtype=float)
            ax.bar(np.arange(len(ticks)), h, bottom=bottom, color=colours[k], label=k, width=0.8)
            bottom += h
        ax.set_xticks(np.arange(len(ticks)), ticks, fontsize=7, rotation=45 if len(ticks) > 8 else 0)
        ax.set_ylabel("features", fontsize=8)
        ax.set_title(row_title, fontsize=8)
    axes[-1].set_xlabel(x_name)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    return fig


def timeline_figure(steps: np.ndarray, loss: np.ndarray, feature_steps: np.ndarray, D: np.ndarray,
                    plateaus: list[tuple[int, int]], drops: list[tuple[int, int, int, bool]],
                    marks: list[tuple[int, float, bool, bool]], changes: list[tuple[int, str, bool]],
                    title: str) -> Figure:
    """Loss above, per-feature D_i below, on a log-step axis, with the detected events.

    ``steps``, ``loss`` [T]; ``feature_steps`` [T'] and masked ``D`` [T', n]. ``plateaus``:
    (start step, end step); ``drops``: (start, end, step, matched); ``marks``: (step, D at that
    step, learned, matched) per learned event or transition; ``changes``: (step, new geometry,
    matched) per geometry event. Matched drops are green, drops without an event red.
    """
    fig = new_figure(9, 6.4)
    ax_l, ax_d = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.2))
    ok = steps >= 1
    ax_l.plot(steps[ok], loss[ok], color="black", lw=1.5, marker=".", ms=3)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("eval loss")
    for a, b in plateaus:
        ax_l.axvspan(a, b, color="grey", alpha=0.15, lw=0)
    for a, b, at, matched in drops:
        colour = "#2a9d3f" if matched else "#d1495b"
        ax_l.axvspan(a, b, color=colour, alpha=0.12, lw=0)
        for ax in (ax_l, ax_d):
            ax.axvline(at, color=colour, lw=1.2, ls="-" if matched else "--")
    for k, (step, name, matched) in enumerate(changes):
        ax_d.axvline(step, color="#555555", lw=0.8, ls=":")
        ax_d.annotate(name, (step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -4 - 9 * (k % 3)),
                      textcoords="offset points", fontsize=6, va="top", color="#333333")
    fok = feature_steps >= 1
    n = D.shape[1]
    colours = matplotlib.colormaps["viridis"](np.linspace(0.95, 0.05, max(n, 1)))
    for i in range(n):
        ax_d.plot(feature_steps[fok], D[fok, i], color=colours[i], lw=1, alpha=0.85 if n <= 20 else 0.4)
    for step, d, learned, matched in marks:
        if learned:
            ax_d.plot(step, d, marker="o", ms=5, mfc="none", mec="#555555", mew=0.8)
        else:
            ax_d.plot(step, d, marker="v", ms=6, color="#2a9d3f" if matched else "#d1495b",
                      markeredgecolor="black", markeredgewidth=0.4)
    for lv in LEVELS[:-1]:
        ax_d.axhline(lv.value, color="grey", lw=0.7, ls=":")
        ax_d.annotate(lv.text, (1.0, lv.value), xycoords=("axes fraction", "data"), xytext=(2, 0),
                      textcoords="offset points", fontsize=7, va="center", color="dimgrey")
    ax_d.set_ylim(-0.03, 1.1)
    ax_d.set_xscale("log")
    ax_d.set_xlabel("step")
    ax_d.set_ylabel("D_i")
    handles = [Patch(color="grey", alpha=0.3, label="plateau"),
               Line2D([], [], color="#2a9d3f", label="drop with a geometry event"),
               Line2D([], [], color="#d1495b", ls="--", label="drop without one"),
               Line2D([], [], color="#2a9d3f", marker="v", lw=0, label="level jump at a drop"),
               Line2D([], [], color="#d1495b", marker="v", lw=0, label="level jump elsewhere"),
               Line2D([], [], color="#555555", marker="o", mfc="none", lw=0, label="feature learned"),
               Line2D([], [], color="#555555", ls=":", label="geometry event (new label)")]
    ax_l.legend(handles=handles, fontsize=6.5, loc="lower left")
    fig.suptitle(title, fontsize=10)
    return fig
