"""Every experiment of the paper runs end to end through the sweep service (`debug=smoke`).

One local Ray serves all the sweeps (starting one per sweep would cost more than the training);
each experiment's smoke grid is trained for real at a shortened length, then `tms analyze`
reads some of the stores back and writes the figures the paper shows.
"""

import json

import pandas as pd
import pytest

from conftest import read_store
from sweeps.grid import conf_dir
from sweeps.plan import make_plan
from tms.cli import main

pytestmark = pytest.mark.serial  # sweeps on one local Ray cluster: one at a time, in one test worker

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
PAPER = {"intro", "basic", "basic_n80m20", "phase_n2m1", "phase_n3m2", "uniform", "pentagon", "correlated",
         "anticorrelated", "dynamics_digons", "dynamics_octahedron", "privileged", "abs_value"}
# debug=smoke shortened further so that all thirteen sweeps fit in CI: 300 steps of 256 rows, 11 checkpoints.
SHORT = ["debug=smoke", "train.steps=300", "train.batch_size=256", "train.eval_batch_size=256",
         "train.log_checkpoints=5", "train.linear_checkpoints=4", "train.selection_rows=8192", "wandb.mode=disabled"]
# uniform packs its 8 smoke points into one trial (one CPU); two trials use both
EXTRA = {"uniform": ["sweep.points_per_trial=4"]}
# figures `tms analyze` must draw for these experiments (file-name prefixes)
ANALYSED = {"intro": ("geometry", "wtw", "directions", "energy"), "phase_n2m1": ("phase",),
            "privileged": ("neurons",), "dynamics_octahedron": ("timeline",)}


# beyond the paper (docs/beyond_the_paper.md): composed here, trained by their own tests' smaller grids
BEYOND = {"double_descent", "scaling", "many_features"}


def test_every_paper_experiment_has_a_config():
    assert set(EXPERIMENTS) == PAPER | BEYOND
    for experiment in sorted(BEYOND):
        plan = make_plan([f"experiment={experiment}", "debug=smoke", "train.steps=300", "train.warmup_steps=0"])
        assert len(plan) > 0 and plan.name == f"{experiment}-smoke"


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_every_experiment_smoke_sweep_runs_and_is_analysed(local_ray, tmp_path):
    import ray

    store = tmp_path / "store"
    for experiment in sorted(PAPER):
        overrides = [f"experiment={experiment}", f"store={store}", *SHORT, *EXTRA.get(experiment, []),
                     f"ray.address={local_ray}"]
        plan = make_plan(overrides)
        try:
            assert main(["sweep", *overrides]) == 0, experiment
        finally:
            ray.shutdown()  # the driver's connection only; the local cluster stays up
        tables = read_store(store / plan.name)
        points = tables["points"]
        assert len(points) == len(plan) and (points.status == "done").all(), experiment
        assert set(tables["weights"].point_id) == set(points.point_id), experiment
        assert tables["metrics"].groupby("point_id").step.max().eq(300).all(), experiment

    for experiment, figures in ANALYSED.items():
        sweep_dir = store / f"{experiment}-smoke"
        assert main(["analyze", str(sweep_dir), "--formats", "png"]) == 0, experiment
        out = sweep_dir / "analysis"
        pngs = [p.name for p in out.glob("*.png")]
        for prefix in figures:
            assert any(name.startswith(prefix) for name in pngs), (experiment, prefix, pngs)
        summary = json.loads((out / "summary.json").read_text())
        assert (out / "report.html").stat().st_size > 10_000
        assert summary["analysed_points"] == len(read_store(sweep_dir)["points"]), experiment

    phase = pd.read_parquet(store / "phase_n2m1-smoke" / "analysis" / "phase.parquet")
    assert len(phase) == 16 and phase["analytic_label"].notna().all()
