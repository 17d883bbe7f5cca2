"""End to end on a small real sweep: `tms sweep experiment=intro debug=smoke`, then `tms analyze`."""

import importlib.util
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.serial  # a sweep on Ray: one at a time, in one test worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _missing() -> str:
    for module, piece in (("tms.cli", "the tms command (tms.cli)"),
                          ("toymodels.trainer", "the trainer (toymodels.trainer)")):
        try:
            if importlib.util.find_spec(module) is None:
                return piece
        except ImportError:
            return piece
    return ""


def _tms() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "tms")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "tms"]


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing()), reason=f"needs {_missing()}, which is not there yet")
def test_intro_smoke_sweep_analysed(tmp_path):
    store = tmp_path / "runs"
    sweep = subprocess.run([*_tms(), "sweep", "experiment=intro", "debug=smoke", f"store={store}",
                            "wandb.mode=disabled"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    sweep_dir = store / "intro-smoke"
    run = subprocess.run([*_tms(), "analyze", str(sweep_dir), "--formats", "png", "--max-timelines", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = sweep_dir / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    points = pd.read_parquet(sweep_dir / "points.parquet")
    assert summary["analysed_points"] == len(points) == (points["status"] == "done").sum()
    assert sorted(summary["files"]) == sorted(os.listdir(out))
    for name in ("phase.parquet", "events.parquet", "geometry.parquet", "energy.parquet", "report.html",
                 "wtw.png", "directions.png", "energy.png", "geometry.png"):
        assert (out / name).exists(), name

    # the paper's E1 trend, robust even for a short run: sparse data puts features in
    # superposition, so D* falls and more features are learned than when dense
    phase = pd.read_parquet(out / "phase.parquet").merge(points[["point_id", "final_d_star"]], on="point_id")
    dense = phase.loc[phase["data.density"].idxmax()]
    sparse = phase.loc[phase["data.density"].idxmin()]
    assert sparse["final_d_star"] < dense["final_d_star"] - 0.3
    geo = pd.read_parquet(out / "geometry.parquet")
    best = geo[geo["best"]]
    learned = best[best["name"] != "not learned"].groupby("point_id")["k"].sum()
    assert learned.get(sparse["point_id"], 0) > learned.get(dense["point_id"], 0)
    assert learned.get(sparse["point_id"], 0) >= 4

    events = pd.read_parquet(out / "events.parquet")
    assert set(events["point_id"]) <= set(points["point_id"])
    assert set(events["kind"]) <= {"plateau", "drop", "learned", "transition", "geometry"}
    timelines = [f for f in os.listdir(out) if f.startswith("timeline_")]
    assert len(timelines) == 2
