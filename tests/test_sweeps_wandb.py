"""W&B dashboards that show models: one offline run per point, the summary run, read back from the files."""

import numpy as np
import pytest

from conftest import FAST, read_store, tms, wandb_runs
from sweeps.tracking import run_id

pytestmark = pytest.mark.serial  # a sweep on Ray: one at a time, in one test worker

GRID = ["sweep.name=perpoint", "model.n_features=5", "model.n_hidden=2", "data.density=1.0,0.3,0.1", "sweep.seeds=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """6 points in one trial, W&B offline with the default wandb.runs=auto (6 <= max_point_runs)."""
    root = tmp_path_factory.mktemp("wandb") / "store"
    proc = tms("sweep", f"store={root}", *FAST, *GRID, "wandb.mode=offline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "perpoint"


@pytest.fixture(scope="module")
def runs(sweep):
    """The sweep's offline W&B runs, read back from their files."""
    return wandb_runs(sweep)


@pytest.mark.slow
def test_every_point_is_a_run_with_its_settings_and_its_own_curves(sweep, runs):
    s = read_store(sweep)
    point_runs = [r for r in runs if r["run"]["job_type"] == "point"]
    assert not [r for r in runs if r["run"]["job_type"] == "train"], "no pack runs when every point has its own"
    points = s["points"].set_index("point_id")
    assert sorted(r["run"]["run_id"] for r in point_runs) == sorted(run_id("perpoint", p) for p in points.index)
    metrics = s["metrics"].set_index(["point_id", "step"]).sort_index()
    features = s["features"].set_index(["point_id", "step", "feature"]).sort_index()
    for r in point_runs:
        config = {k: v["value"] if isinstance(v, dict) and "value" in v else v
                  for k, v in r["run"]["config"]["update"].items()}
        pid = config["point_id"]
        point = points.loc[pid]
        # the run's config holds the point's settings, so W&B filters and groups by them
        assert config["data"]["density"] == point["data.density"] and config["seed"] == point.seed
        assert config["model"]["n_features"] == 5 and config["train"]["steps"] == 300
        assert r["run"]["run_group"] == "perpoint" and r["run"]["display_name"].endswith(f"seed={point.seed}")
        assert f"density={point['data.density']:.4g}" in r["run"]["display_name"]
        # its history: loss, D* and each feature's D_i at every checkpoint, as in the store
        rows = [h for h in r["history"] if "loss" in h]
        want = metrics.loc[pid]
        assert [h["_step"] for h in rows] == want.index.tolist()
        np.testing.assert_allclose([h["loss"] for h in rows], want.loss, rtol=1e-6)
        np.testing.assert_allclose([h["d_star"] for h in rows], want.d_star, rtol=1e-6)
        for h in rows:
            dims = features.loc[(pid, h["_step"])].dimensionality.to_numpy()
            np.testing.assert_allclose([h[f"dimensionality/{j:02d}"] for j in range(5)], dims, rtol=1e-6)
        # the D_i chart: one line per feature over the steps
        chart = r["tables"]["dimensionality"]
        assert sorted({row[1] for row in chart["data"]}) == [f"feature {j}" for j in range(5)]
        assert len(chart["data"]) == 5 * len(rows)
        assert r["exit_code"] == 0


@pytest.mark.slow
def test_the_summary_run_plots_d_star_against_density(sweep, runs):
    """(`tms analyze` adding its figures to this run: tests/test_sweeps_local.py.)"""
    points = read_store(sweep)["points"]
    summary = [r for r in runs if r["run"]["job_type"] == "summary"]
    assert len(summary) == 1 and summary[0]["run"]["run_id"] == run_id("perpoint", "summary")
    chart = summary[0]["tables"]["d"]  # d_star_vs_density_table: [density, line, D*]
    best = points.sort_values("selection_loss").drop_duplicates("cell_id").set_index("data.density").final_d_star
    got = {x: y for x, _, y in chart["data"]}
    assert sorted(got) == [0.1, 0.3, 1.0]
    for density, d_star in got.items():
        assert d_star == pytest.approx(best[density], rel=1e-6)


def test_per_point_runs_above_the_cap_are_refused_and_auto_falls_back_to_trial_runs(store):
    proc = tms("sweep", f"store={store}", *FAST, *GRID, "wandb.mode=offline", "wandb.runs=point",
               "wandb.max_point_runs=4")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not store.exists()
    assert proc.stderr.startswith("error: wandb.runs: point would make 6 W&B runs, above wandb.max_point_runs=4")

    from sweeps.tracking import check

    cfg = {"mode": "offline", "project": "p", "runs": "auto", "max_point_runs": 4}
    assert check(cfg, str(store), 4)["runs"] == "point"
    assert check(cfg, str(store), 5)["runs"] == "trial"
    assert check({**cfg, "mode": "disabled", "runs": "point"}, str(store), 5)["mode"] == "disabled", \
        "no W&B, no cap to respect"
