"""Memorisation and double descent (Henighan et al. 2023): test loss and dimensionalities against T.

For a sweep over ``data.dataset_size`` (T fixed training points): the test loss — the selection
loss, the expected objective on fresh data — against T, where the double descent shows; and,
against T, which of the two holds clean directions of the hidden space, the training points or
the features: the largest data-point dimensionality max_t D_t (``metrics/`` column
``data_dimensionality_max``) beside the largest feature dimensionality max_i D_i, both at the last
checkpoint. While a model memorises, its training points form a polygon (D_t = m/T each) and no
feature has a direction of its own; once it generalises, features do (a k-gon: D_i = m/k) and
the training points, sums of many features, have none; in between neither does. The sums Σ_t D_t
and Σ_i D_i do not show this: they are near m whenever the vectors spread over every direction.
Reads the store only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from . import plots
from .figures import Figure

T_KEY = "data.dataset_size"


def table(run) -> pd.DataFrame | None:
    """Per finished point: T, the test loss, max_t D_t and max_i D_i at the last checkpoint (None
    unless the sweep varies ``data.dataset_size``)."""
    if T_KEY not in run.swept:
        return None
    pts = run.pts
    offsets = dict(zip(run.per_point_ids, np.cumsum([0, *run.per_point_n[:-1]])))
    sizes = dict(zip(run.per_point_ids, run.per_point_n))
    feature_dims = [float(np.nanmax(run.final_dims[offsets[p]:offsets[p] + sizes[p]], initial=0.0))
                    for p in pts["point_id"]]
    data_dims = final_metric(run.store, "data_dimensionality_max")
    return pd.DataFrame({"point_id": pts["point_id"], "T": pts[T_KEY].astype(float),
                         "n_hidden": pts["model.n_hidden"].astype(float),
                         "test_loss": pts["selection_loss"].astype(float),
                         "feature_dimensionality": feature_dims,
                         "data_dimensionality": pts["point_id"].map(data_dims).astype(float)})


def final_metric(store, column: str) -> dict[str, float]:
    """point_id -> ``column`` of ``metrics/`` at each point's last checkpoint (trials whose part
    lacks the column — written by older code — are left out)."""
    out: dict[str, float] = {}
    for key, ids in store._trials.items():
        data = store._fragment("metrics", key, ("point_id", "step"))
        if column not in data.schema.names:
            continue
        t = store._read(data, ["point_id", "step", column], ids).to_pandas()
        last = t.sort_values("step").groupby("point_id").tail(1)
        out.update(zip(last["point_id"].astype(str), last[column].astype(float)))
    return out


def draw(run, out: str) -> list[Figure]:
    frame = table(run)
    if frame is None:
        return []
    fc = run.cfg.figures
    fig = plots.new_figure(10, 4)
    loss_ax, dim_ax = fig.subplots(1, 2)
    best = frame.sort_values("test_loss").groupby("T").head(1).sort_values("T")
    loss_ax.plot(frame["T"], frame["test_loss"], "o", color="0.7", ms=3, label="every seed")
    loss_ax.plot(best["T"], best["test_loss"], "o-", color="C0", label="best seed")
    loss_ax.set(xscale="log", yscale="log", xlabel="training points T", ylabel="test loss (fresh data)",
                title="double descent")
    loss_ax.legend()
    mean = frame.groupby("T")[["feature_dimensionality", "data_dimensionality"]].mean().sort_index()
    dim_ax.plot(mean.index, mean["data_dimensionality"], "o-", color="C3", label="max_t D_t (training points)")
    dim_ax.plot(mean.index, mean["feature_dimensionality"], "o-", color="C2", label="max_i D_i (features)")
    dim_ax.plot(mean.index, np.minimum(1.0, frame["n_hidden"].iloc[0] / mean.index.to_numpy(float)), color="C3",
                lw=0.8, ls=":", label="m/T (the T points as a polygon)")
    dim_ax.set(xscale="log", xlabel="training points T", ylabel="largest dimensionality (mean over seeds)",
               title="memorising → generalising")
    dim_ax.legend()
    title = f"{run.store.name}: test loss and dimensionality against the training-set size"
    fig.suptitle(title)
    return [Figure("double descent", title, plots.save(fig, out, "double_descent", fc.formats, fc.dpi))]
