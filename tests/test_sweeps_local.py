"""A real sweep on an embedded local Ray: rows, retries, divergence, W&B offline, secrets, reruns."""

import json
import re
import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FAST, ROOT, n_checkpoints, read_store, store_files, tms, wandb_runs

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # real sweeps on Ray: `make test-fast` leaves them out


TOKEN = "raytok-" + secrets.token_hex(12)
API_KEY = secrets.token_hex(20)
GRID = ["sweep.name=local", "model.n_features=5", "model.n_hidden=2", "data.density=1.0,0.1",
        "train.lr=0.001,1e30", "sweep.seeds=2", "sweep.points_per_trial=4"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep, shared by the tests below: 8 points in 2 trials, every trial failing once
    (ray.inject_failures=1) and retried by Ray; the lr=1e30 points diverge; W&B offline, a run per trial;
    a Ray token and a W&B key in the environment that must not leak anywhere."""
    root = tmp_path_factory.mktemp("local") / "store"
    args = ["sweep", f"store={root}", *FAST, *GRID, "ray.inject_failures=1", "wandb.mode=offline", "wandb.runs=trial"]
    proc = tms(*args, env={"RAY_AUTH_TOKEN": TOKEN, "WANDB_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"root": root, "dir": root / "local", "args": args, "proc": proc}


def test_every_row_is_written_exactly_once(sweep):
    s = read_store(sweep["dir"])
    ck, n = n_checkpoints(), 5
    assert len(s["points"]) == 8 and s["points"].point_id.is_unique
    assert len(s["metrics"]) == 8 * ck and not s["metrics"].duplicated(["point_id", "step"]).any()
    assert len(s["features"]) == 8 * ck * n
    assert not s["features"].duplicated(["point_id", "step", "feature"]).any()
    assert sorted(s["points"].point_id) == sorted(s["done"].point_id)
    assert len(s["weights"]) == 8 * ck and not s["weights"].duplicated(["point_id", "step"]).any()
    assert sorted(s["weights"][s["weights"].step == 300].point_id) == sorted(s["points"].point_id)
    assert set(s["metrics"].point_id) == set(s["points"].point_id)
    # the swept keys are columns of points.parquet, named by their dotted key
    meta = json.loads((sweep["dir"] / "sweep.json").read_text())
    assert meta["swept"] == ["data.density", "train.lr"] and meta["schema_version"] == 2
    assert meta["counts"] == {"points": 8, "done": 4, "diverged": 4, "failed": 0, "pending": 0}
    assert sorted(s["points"]["data.density"].unique()) == [0.1, 1.0]


def test_diverged_points_are_recorded_and_the_sweep_goes_on(sweep):
    p = read_store(sweep["dir"])["points"]
    diverged = p[p.status == "diverged"]
    assert (diverged["train.lr"] == 1e30).all() and len(diverged) == 4
    assert (diverged.diverged_step >= 0).all()
    ok = p[p.status == "done"]
    assert (ok["train.lr"] == 0.001).all() and ok.diverged_step.isna().all()
    assert np.isfinite(ok.final_loss).all() and (ok.final_loss < 0.2).all()


def test_a_failing_trial_is_retried_by_ray_and_leaves_no_orphans(sweep):
    s = read_store(sweep["dir"])
    assert (s["done"].attempt == 2).all(), "each trial must have failed once and succeeded on its retry"
    assert s["done"].trial_key.nunique() == 2
    retried = [line for line in sweep["proc"].stderr.splitlines() if "retrying" in line]
    assert len(retried) == 2 and all("RuntimeError: injected failure" in line for line in retried)
    assert "Traceback" not in sweep["proc"].stderr
    files = [p.relative_to(sweep["dir"]) for p in store_files(sweep["dir"])
             if p.parts[len(sweep["dir"].parts)] in ("metrics", "features", "weights", "done")]
    assert len(files) == 4 * 2 and not [f for f in files if f.name.endswith(".tmp")]
    assert not list(sweep["dir"].glob("ray/*/*/checkpoint_*")), "committed trials keep no Tune checkpoint"


def test_offline_wandb_runs_hold_the_same_numbers_as_parquet(sweep):
    s = read_store(sweep["dir"])
    runs = wandb_runs(sweep["dir"])
    failed = [r for r in runs if r["run"]["job_type"] == "train" and r["exit_code"] != 0]
    train = [r for r in runs if r["run"]["job_type"] == "train" and r["exit_code"] == 0]
    summary = [r for r in runs if r["run"]["job_type"] == "summary"]
    assert len(train) == 2 and len(summary) == 1, "one run per trial plus the sweep's summary run"
    assert len(failed) == 2 and all(not r["tables"] for r in failed), "each failed attempt is a failed run"
    assert {r["run"]["run_group"] for r in runs} == {"local"}
    assert sorted(r["run"]["display_name"] for r in train) == sorted(s["done"].trial_key.unique())

    metrics = s["metrics"].set_index(["point_id", "step"])
    features = s["features"].set_index(["point_id", "step", "feature"]).sort_index()
    points = s["points"].set_index("point_id")
    steps = sorted(s["metrics"].step.unique())
    for r in train:
        pts = pd.DataFrame(r["tables"]["points"]["data"], columns=r["tables"]["points"]["columns"])
        assert set(pts.point_id) == set(s["done"][s["done"].trial_key == r["run"]["display_name"]].point_id)
        assert (pts.set_index("point_id").status == points.status.loc[pts.point_id]).all()
        assert "data.density" in pts.columns and "train.lr" in pts.columns  # the varied values
        curves = pd.DataFrame(r["tables"]["curves"]["data"], columns=r["tables"]["curves"]["columns"])
        assert len(curves) == len(pts) * len(steps)
        for row in curves.itertuples():
            want = metrics.loc[(row.point_id, row.step)]
            assert row.loss == pytest.approx(float(want.loss), rel=1e-6, nan_ok=True)
            dims = features.loc[(row.point_id, row.step)].dimensionality.to_numpy()
            np.testing.assert_allclose(row.dimensionality, dims, rtol=1e-6)
        # the per-checkpoint history: one entry per checkpoint, means over the trial's finite losses
        logged = [h for h in r["history"] if "eval_loss/mean" in h]
        assert [h["_step"] for h in logged] == steps
        last = metrics.loc[list(pts.point_id)].xs(steps[-1], level="step").loss
        finite = last[np.isfinite(last)]
        if len(finite):
            assert logged[-1]["eval_loss/mean"] == pytest.approx(float(finite.mean()), rel=1e-5)
        # every feature of every point is in the dimensionality histogram of each checkpoint
        for h in logged:
            dims = features.loc[list(pts.point_id)].xs(h["_step"], level="step").dimensionality
            if np.isfinite(dims).any():
                assert sum(h["dimensionality/hist.values"]) == int(np.isfinite(dims).sum())
    table = summary[0]["tables"]["points"]
    assert sorted(row[table["columns"].index("point_id")] for row in table["data"]) == sorted(points.index)


def test_tokens_and_keys_never_reach_the_store_or_the_output(sweep):
    for path in store_files(sweep["dir"]):
        data = path.read_bytes()
        assert TOKEN.encode() not in data and API_KEY.encode() not in data, path
    output = sweep["proc"].stdout + sweep["proc"].stderr
    assert TOKEN not in output and API_KEY not in output


def test_rerunning_a_finished_sweep_trains_nothing(sweep):
    """Nothing but the driver's own record (.driver.json: who ran it last) changes; Ray is not started."""
    data = lambda: {p: p.stat().st_mtime_ns for p in store_files(sweep["dir"])  # noqa: E731
                    if "wandb" not in p.parts and p.name != ".driver.json"}
    before = data()
    proc = tms(*sweep["args"])
    assert proc.returncode == 0, proc.stderr
    assert "all 8 points are done" in proc.stderr
    assert data() == before


def test_reusing_a_name_for_another_grid_is_refused_and_changes_nothing(sweep):
    before = {p: p.read_bytes() for p in store_files(sweep["dir"])}
    args = [a if not a.startswith("data.density=") else "data.density=1.0,0.3" for a in sweep["args"]]
    proc = tms(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: sweep.name: ") and "already holds a different grid" in proc.stderr
    assert "choose a new sweep.name" in proc.stderr and proc.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in store_files(sweep["dir"])} == before


def test_gpus_asked_for_but_absent_fail_before_anything_is_queued(store):
    proc = tms("sweep", f"store={store}", *FAST, "sweep.name=gpu", "data.density=1.0,0.5", "ray.gpus_per_trial=0.5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: ray.gpus_per_trial: 0.5 GPU per trial asked for, but the Ray cluster has no GPU; "
        "use ray.gpus_per_trial=0 to train on CPUs")
    assert not store.exists()


def test_analyze_runs_the_analysis_and_logs_its_outputs_to_wandb(sweep, tmp_path):
    pytest.importorskip("analysis.cli")
    out = tmp_path / "analysis"
    proc = tms("analyze", str(sweep["dir"]), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = sorted(p.stem for p in out.glob("*.png"))
    tables = sorted(p.stem for p in out.glob("*.parquet"))
    assert figures or tables
    runs = [r for r in wandb_runs(sweep["dir"]) if r["run"]["job_type"] == "summary"]
    assert len(runs) == 2 and {r["run"]["run_group"] for r in runs} == {"local"}
    assert len({r["run"]["run_id"] for r in runs}) == 1, "the analysis is added to the sweep's summary run"
    logged = set().union(*(h.keys() for h in runs[1]["history"]))
    assert {f"figures/{f}._type" for f in figures} <= logged
    assert {f"tables/{t}._type" for t in tables} <= logged


def _docs_examples() -> dict[str, str]:
    """The reading examples of docs/store.md, by language (python: pandas, polars; sql: duckdb)."""
    text = (ROOT / "docs" / "store.md").read_text().split("## Reading it", 1)[1]
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)
    return {"pandas": next(code for lang, code in blocks if lang == "python" and "pandas" in code),
            "polars": next(code for lang, code in blocks if lang == "python" and "polars" in code),
            "duckdb": next(code for lang, code in blocks if lang == "sql")}


def _read_with_the_docs_examples(sweep_dir: Path) -> dict[str, set]:
    """(point_id, step, feature) of the feature rows each documented reader returns."""
    import duckdb

    examples = {k: v.replace("runs/intro", str(sweep_dir)) for k, v in _docs_examples().items()}
    got = {}
    for name in ("pandas", "polars"):
        scope: dict = {}
        exec(examples[name], scope)  # noqa: S102 - the documentation's own example
        frame = scope["features"]
        frame = frame if isinstance(frame, pd.DataFrame) else frame.to_pandas()
        got[name] = set(zip(frame.point_id, frame.step, frame.feature))
    frame = duckdb.sql(examples["duckdb"]).df()
    got["duckdb"] = set(zip(frame.point_id, frame.step, frame.feature))
    return got


def _assert_committed_only(sweep_dir: Path, want: set) -> None:
    got = _read_with_the_docs_examples(sweep_dir)
    assert got["pandas"] == want and got["polars"] == want
    assert got["duckdb"] == {row for row in want if row[1] == 300}, "duckdb's example keeps the last step"


def test_a_trial_failing_every_retry_leaves_no_row_a_reader_can_see_and_the_next_run_trains_it(store):
    """One trial of two fails all its retries (after staging part of its rows): its points are
    marked failed, nothing of it is visible, and pandas, duckdb and polars — as docs/store.md
    shows them — return the committed rows only, even with a commit cut short in the store."""
    args = ["sweep", f"store={store}", *FAST, "sweep.name=flaky", "data.density=1.0,0.5", "sweep.points_per_trial=1"]
    failing = tms(*args, "ray.inject_failures=2", "ray.max_failures=1", "ray.inject_failures_trials=1")
    assert failing.returncode == 1, failing.stderr
    assert "failed 2 times, its 1 points are marked failed: RuntimeError: injected failure" in failing.stderr
    sweep_dir = store / "flaky"
    s = read_store(sweep_dir)
    assert sorted(s["points"].status) == ["done", "failed"]
    committed = set(s["done"].trial_key)
    for part in ("metrics", "features", "weights"):
        keys = {p.name[len("part-"):-len(".parquet")] for p in (sweep_dir / part).iterdir()}
        assert keys == committed, f"{part}/ holds rows of a trial that never committed"
    assert not (sweep_dir / "_staging").exists(), "the failed attempts' staged rows are cleaned at exit"
    status = tms("status", str(sweep_dir))
    assert status.returncode == 0 and "2 points: 1 done, 0 diverged, 1 failed, 0 pending" in status.stdout

    want = {(p, st, f) for p, st, f in zip(s["features"].point_id, s["features"].step, s["features"].feature)}
    assert want, "the committed trial has feature rows"
    _assert_committed_only(sweep_dir, want)
    # a commit cut short (a driver killed after moving a trial's parts, before its marker)
    for part in ("metrics", "features"):
        table = pq.read_table(next((sweep_dir / part).glob("part-*.parquet")))
        table = table.set_column(0, "point_id", pa.array(["f" * 16] * len(table)))
        pq.write_table(table, sweep_dir / part / f"part-{'e' * 16}.parquet")
    _assert_committed_only(sweep_dir, want)

    again = tms(*args)
    assert again.returncode == 0, again.stderr
    assert "1 points to train in 1 trials, resuming with 1 done, 2 stale files removed" in again.stderr
    s = read_store(sweep_dir)
    assert (s["points"].status == "done").all()
    assert len(s["metrics"]) == 2 * n_checkpoints() and not s["metrics"].duplicated(["point_id", "step"]).any()
