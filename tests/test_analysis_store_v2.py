"""Schema-2 stores (selection_loss, weights at every checkpoint) and schema-1 stores read alike."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisConfig, FigureConfig, analyze
from analysis.geometry import label
from analysis.store import Store
from analysis_fixtures import (FakePoint, checkpoint_steps, intro_points, keyframe_path, phase_points, polygon,
                               point_id, series, write_store)

QUIET = AnalysisConfig(figures=FigureConfig(formats=("png",), max_timelines=1))


def test_best_of_n_uses_the_shared_selection_loss(tmp_path):
    """Each cell's seeds get a selection_loss that reverses their final_loss order: the seed
    the analysis keeps is the one with the lowest selection_loss."""
    pts, _ = phase_points(2, [0.3, 0.05], [0.3, 3.0], seeds=3)
    for p in pts:
        p.selection_loss = 1.0 - p.final_loss
    sweep = write_store(str(tmp_path), "sel", pts, ["data.density", "data.extra_importance"], steps=200, schema=2)
    result = analyze(sweep, config=QUIET)
    assert result.summary["seeds_ranked_by"] == "selection_loss"
    assert not any("selection_loss" in w for w in result.summary["warnings"])
    phase = pd.read_parquet(os.path.join(result.out_dir, "phase.parquet"))
    points = pd.read_parquet(os.path.join(sweep, "points.parquet"))
    want = points.sort_values("selection_loss").groupby("cell_id")["point_id"].first()
    assert dict(zip(phase["cell_id"], phase["point_id"])) == want.to_dict()
    worst_final = points.sort_values("final_loss").groupby("cell_id")["point_id"].last()
    assert dict(zip(phase["cell_id"], phase["point_id"])) == worst_final.to_dict()


def test_schema_1_ranks_by_final_loss_and_says_so(tmp_path):
    pts, _ = phase_points(2, [0.3], [0.3, 3.0], seeds=3)
    sweep = write_store(str(tmp_path), "old", pts, ["data.density", "data.extra_importance"], steps=200, schema=1)
    result = analyze(sweep, config=QUIET)
    assert result.summary["seeds_ranked_by"] == "final_loss"
    assert any("no selection_loss" in w for w in result.summary["warnings"])
    phase = pd.read_parquet(os.path.join(result.out_dir, "phase.parquet"))
    points = pd.read_parquet(os.path.join(sweep, "points.parquet"))
    assert set(phase["point_id"]) == set(points.sort_values("final_loss").groupby("cell_id")["point_id"].first())


def _intro_v2(tmp_path, history=True):
    return write_store(str(tmp_path), "intro2", intro_points(), ["data.density"], steps=2000, per_trial=2,
                       schema=2, history=history)


def test_weights_over_time_are_read_per_checkpoint_and_final_weights_alone(tmp_path):
    sweep = _intro_v2(tmp_path)
    store = Store(sweep)
    steps = checkpoint_steps(2000)
    finals = {w.point_id: w.W for w in store.iter_weights()}
    histories = {h.point_id: h for h in store.iter_weight_history(max_values=50)}   # groups of one point
    assert set(finals) == set(histories) == set(store.points["point_id"])
    for p in intro_points():
        Ws, _ = series(p, steps)
        h = histories[point_id(p)]
        np.testing.assert_array_equal(h.steps, steps)
        np.testing.assert_allclose(h.W, Ws, atol=1e-6)
        np.testing.assert_allclose(finals[point_id(p)], p.W, atol=1e-6)
    # the final step only (over the writer's size cap): no history, same final weights
    only = Store(_intro_v2(tmp_path / "final", history=False))
    assert list(only.iter_weight_history(max_values=10**6)) == []
    assert {w.point_id for w in only.iter_weights()} == set(finals)


def test_geometry_events_come_from_the_weights_when_the_store_has_them(tmp_path):
    """The 0.05 point starts small (nothing learned), forms two antipodal pairs around step 40
    and moves to a pentagon around step 600. Its W at every checkpoint is labelled: the geometry
    events name what W shows, each at its drop, and the summary counts the timelines read from
    weights."""
    sweep = _intro_v2(tmp_path)
    result = analyze(sweep, config=QUIET)
    assert result.summary["timelines_from_weights"] == 3
    ev = pd.read_parquet(os.path.join(result.out_dir, "events.parquet"))
    points = pd.read_parquet(os.path.join(sweep, "points.parquet"))[["point_id", "data.density"]]
    ev = ev.merge(points)
    geo = ev[(ev.kind == "geometry") & (ev["data.density"] == 0.05)].sort_values("step")
    assert list(zip(geo["from"], geo["to"])) == [("not learned ×5", "antipodal pair ×2 + not learned ×1"),
                                                 ("antipodal pair ×2 + not learned ×1", "pentagon ×1")]
    assert geo["matched"].all() and 400 <= geo["step"].iloc[1] <= 1000
    drops = ev[(ev.kind == "drop") & (ev["data.density"] == 0.05)].sort_values("step")
    assert list(drops["step"]) == list(geo["matched_step"]) and drops["matched"].all()


def test_a_sheared_shape_over_time_is_labelled_as_w_shows(tmp_path):
    """A model whose 5 features go from a pentagon to a sheared pentagon: the D_i barely move
    off 2/5, but the label from W says "5 in 2"."""
    sheared = np.array([[1.0, 0.35], [0.0, 1.0]]) @ polygon(5)
    sheared /= np.linalg.norm(sheared, axis=0)
    assert label(sheared, 0.5) == "5 in 2 ×1"
    init = 0.2 * np.random.default_rng(1).normal(size=(2, 5))
    p = FakePoint({"data.density": 0.05}, seed=0, W=sheared, final_loss=0.004, importance=np.ones(5),
                  density=np.full(5, 0.05), W_path=keyframe_path([init, polygon(5), sheared], [40.0, 800.0]))
    q = FakePoint({"data.density": 0.1}, seed=0, W=polygon(5), final_loss=0.005, importance=np.ones(5),
                  density=np.full(5, 0.1))
    sweep = write_store(str(tmp_path), "shear", [p, q], ["data.density"], steps=2000, schema=2)
    result = analyze(sweep, config=QUIET)
    ev = pd.read_parquet(os.path.join(result.out_dir, "events.parquet"))
    geo = ev[(ev.kind == "geometry") & (ev.point_id == point_id(p))]
    assert list(zip(geo["from"], geo["to"]))[-1] == ("pentagon ×1", "5 in 2 ×1")
    with open(os.path.join(result.out_dir, "summary.json")) as f:
        assert json.load(f)["files"]
