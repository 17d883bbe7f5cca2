"""The store: atomic files, staging and commits, clean-up, a trial's rows — no Ray needed."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import toymodels
from sweeps.store import SweepStore
from sweeps.tables import DONE_SCHEMA, METRICS_SCHEMA, conform
from sweeps.writer import TrialWriter
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig


def _metrics(point: str, steps: int) -> pa.Table:
    return pa.table({"point_id": [point] * steps, "step": list(range(steps)), "loss": [0.5] * steps,
                     "train_loss": [0.5] * steps, "frob": [1.0] * steps, "d_star": [1.0] * steps,
                     "lr": [1e-3] * steps, "reconstruction": [0.5] * steps, "penalty": [0.0] * steps,
                     "data_dimensionality": [float("nan")] * steps, "data_dimensionality_max": [float("nan")] * steps},
                    schema=METRICS_SCHEMA)


def _names(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_part_file_is_invisible_until_committed(tmp_path):
    store = SweepStore(str(tmp_path / "s"))
    writer = store.part_writer("metrics/part-a.parquet", METRICS_SCHEMA)
    writer.write(_metrics("p1", 5))
    hidden = [p.name for p in (tmp_path / "s" / "metrics").iterdir()]
    assert len(hidden) == 1 and hidden[0].startswith(".") and hidden[0].endswith(".tmp")
    assert ds.dataset(tmp_path / "s" / "metrics", format="parquet").count_rows() == 0  # readers skip it
    writer.commit()
    assert ds.dataset(tmp_path / "s" / "metrics", format="parquet").count_rows() == 5
    assert [p.name for p in (tmp_path / "s" / "metrics").iterdir()] == ["part-a.parquet"]
    # a failed write leaves nothing behind
    with pytest.raises(RuntimeError):
        with store.part_writer("metrics/part-b.parquet", METRICS_SCHEMA) as w:
            w.write(_metrics("p2", 3))
            raise RuntimeError("crash mid-write")
    assert [p.name for p in (tmp_path / "s" / "metrics").iterdir()] == ["part-a.parquet"]


def _stage(store: SweepStore, generation: int, key: str, kinds=("metrics", "features", "weights", "done")) -> str:
    staged = store.staging(generation, key)
    for kind in kinds:
        table = _metrics(key, 3) if kind != "done" else conform(
            pa.table({"point_id": [key], "trial_key": [key], "status": ["done"], "generation": [generation]}),
            DONE_SCHEMA)
        store.write_table(f"{staged}/{kind}.parquet", table)
    return staged


def test_staged_rows_are_invisible_and_a_commit_publishes_them_marker_last(tmp_path):
    root = tmp_path / "s"
    store = SweepStore(str(root))
    staged = _stage(store, 3, "k1")
    assert staged.startswith("_staging/g3-k1-") and SweepStore.staged_generation(staged) == 3
    for kind in ("metrics", "features", "weights", "done"):
        assert not (root / kind).exists() or ds.dataset(root / kind, format="parquet").count_rows() == 0
    # a reader of the whole sweep folder skips _staging too
    assert ds.dataset(root, format="parquet", exclude_invalid_files=True).count_rows() == 0
    done = store.commit(staged, "k1")
    assert done.column("generation").to_pylist() == [3] and done.schema == DONE_SCHEMA
    assert _names(root) == ["done/k1.parquet", "features/part-k1.parquet", "metrics/part-k1.parquet",
                            "weights/part-k1.parquet"]
    # an incomplete staging folder is never published
    partial = _stage(store, 3, "k2", kinds=("metrics", "features"))
    with pytest.raises(FileNotFoundError):
        store.commit(partial, "k2")
    assert "metrics/part-k2.parquet" not in _names(root)


def test_clean_removes_staging_temporaries_and_parts_without_a_marker(tmp_path):
    root = tmp_path / "s"
    store = SweepStore(str(root))
    store.commit(_stage(store, 1, "kept"), "kept")
    _stage(store, 1, "stale")                                    # a worker of an older driver
    store.write_table("metrics/part-crashed.parquet", _metrics("crashed", 4))  # a commit cut short
    store.write_bytes("features/.part-x.parquet.1234abcd.tmp", b"half a file")
    assert store.clean() == 3
    assert _names(root) == ["done/kept.parquet", "features/part-kept.parquet", "metrics/part-kept.parquet",
                            "weights/part-kept.parquet"]
    assert not (root / "_staging").exists() and store.clean() == 0


def test_markers_of_older_stores_are_read_with_the_current_schema(tmp_path):
    store = SweepStore(str(tmp_path / "s"))
    store.write_table("done/old.parquet", pa.table({"point_id": ["a"], "trial_key": ["old"], "status": ["done"]}))
    done = store.read_done()
    assert done.schema == DONE_SCHEMA and done.column("generation").to_pylist() == [None]


def test_a_trials_rows_match_the_trainer_and_the_store_contract(tmp_path):
    points = [PointSpec(model=ModelConfig(kind="relu_out", n_features=4, n_hidden=2),
                        data=DataConfig(density=d, importance_decay=0.8),
                        train=TrainConfig(steps=60, lr=lr, log_checkpoints=3, linear_checkpoints=2), seed=s)
              for d, lr, s in ((1.0, 1e-3, 0), (0.1, 1e-3, 1), (0.5, 1e30, 2))]
    ids = ["a" * 16, "b" * 16, "c" * 16]
    root = tmp_path / "s"
    store = SweepStore(str(root))
    writer = TrialWriter(store, "k" * 16, ids, generation=7)
    seen = []

    def callback(ck):
        seen.append(ck)
        writer.add(ck)

    result = toymodels.train(points, compile=False, callback=callback)
    writer.stage_metrics()
    writer.stage_rest(result, {"node_id": "n", "device": "cpu", "attempt": 1})
    assert not (root / "metrics").exists(), "nothing is visible before the driver commits"
    store.commit(writer.staged, "k" * 16)
    steps = toymodels.checkpoint_steps(points[0].train)

    metrics = pq.read_table(root / "metrics" / f"part-{'k' * 16}.parquet").to_pandas()
    assert len(metrics) == 3 * len(steps) and metrics.groupby("point_id").step.apply(list).to_dict() == \
        {i: steps for i in ids}
    b = metrics[metrics.point_id == ids[1]]
    np.testing.assert_allclose(b.loss.to_numpy(), [ck.loss[1] for ck in seen], rtol=1e-6)
    np.testing.assert_allclose(b.d_star.to_numpy(), [ck.d_star[1] for ck in seen], rtol=1e-6)

    features = pq.read_table(root / "features" / f"part-{'k' * 16}.parquet").to_pandas()
    assert len(features) == 3 * len(steps) * 4
    last = features[(features.point_id == ids[1]) & (features.step == steps[-1])].sort_values("feature")
    np.testing.assert_allclose(last.dimensionality, seen[-1].dimensionality[1], rtol=1e-6)
    np.testing.assert_allclose(last.importance, result.importance[1], rtol=1e-6)
    np.testing.assert_allclose(last.density, result.density[1], rtol=1e-6)

    weights = pq.read_table(root / "weights" / f"part-{'k' * 16}.parquet").to_pandas()
    assert len(weights) == 3 * len(steps) and sorted(set(weights.step)) == steps   # weights over time
    final = weights[weights.step == steps[-1]].set_index("point_id").loc[ids]
    np.testing.assert_allclose(np.asarray(final.W.iloc[0]).reshape(2, 4), result.W[0], rtol=1e-6)
    assert weights.W2.isna().all() and set(weights.n_hidden) == {2}
    early = weights[(weights.step == steps[1]) & (weights.point_id == ids[1])]
    np.testing.assert_allclose(np.asarray(early.W.iloc[0]).reshape(2, 4), seen[1].W[1], rtol=1e-6)
    assert metrics.penalty.eq(0).all() and np.allclose(metrics.loss, metrics.reconstruction, equal_nan=True)

    done = pq.read_table(root / "done" / f"{'k' * 16}.parquet")
    np.testing.assert_allclose(done.column("selection_loss").to_numpy(), result.selection_loss)
    assert done.column("status").to_pylist() == ["done", "done", "diverged"]
    assert done.column("diverged_step").to_pylist()[:2] == [None, None]
    assert done.column("diverged_step").to_pylist()[2] >= 0
    assert done.column("generation").to_pylist() == [7, 7, 7]


def test_weights_history_off_stores_the_final_weights_only(tmp_path):
    points = [PointSpec(model=ModelConfig(kind="abs", n_features=4, n_hidden=3), data=DataConfig(density=0.5),
                        train=TrainConfig(steps=20, log_checkpoints=3, linear_checkpoints=2, selection_rows=1024), seed=s)
              for s in range(2)]
    store = SweepStore(str(tmp_path / "s"))
    writer = TrialWriter(store, "w" * 16, ["x" * 16, "y" * 16], generation=1, weights_history=False)
    result = toymodels.train(points, compile=False, callback=writer.add)
    writer.stage_metrics()
    writer.stage_rest(result, {})
    store.commit(writer.staged, "w" * 16)
    weights = pq.read_table(tmp_path / "s" / "weights" / f"part-{'w' * 16}.parquet").to_pandas()
    assert list(weights.step) == [20, 20]
    np.testing.assert_allclose(np.asarray(weights.W2[1]).reshape(4, 3), result.W2[1], rtol=1e-6)


def test_a_finite_training_sets_data_point_dimensionalities_are_stored_as_their_sum_and_max(tmp_path):
    """Per checkpoint, Σ_t D_t and max_t D_t of the trainer's D_t [points, T]; NaN without a
    finite set (the second point trains on fresh batches)."""
    points = [PointSpec(model=ModelConfig(kind="relu_out", n_features=12, n_hidden=2),
                        data=DataConfig(density=0.2, dataset_size=size, normalize=True),
                        train=TrainConfig(steps=40, log_checkpoints=2, linear_checkpoints=2, selection_rows=1024), seed=0)
              for size in (5, None)]
    store = SweepStore(str(tmp_path / "s"))
    writer = TrialWriter(store, "d" * 16, ["p" * 16], generation=1)
    seen = []
    result = toymodels.train(points[:1], compile=False, callback=lambda ck: (seen.append(ck), writer.add(ck)))
    fresh = TrialWriter(store, "e" * 16, ["q" * 16], generation=1)
    fresh_result = toymodels.train(points[1:], compile=False, callback=fresh.add)
    for w, r, key in ((writer, result, "d" * 16), (fresh, fresh_result, "e" * 16)):
        w.stage_metrics()
        w.stage_rest(r, {})
        store.commit(w.staged, key)
    metrics = pq.read_table(tmp_path / "s" / "metrics" / f"part-{'d' * 16}.parquet").to_pandas()
    D = np.stack([ck.data_dimensionality[0] for ck in seen])                      # [checkpoints, T]
    assert D.shape[1] == 5 and (D.max(1) > D.min(1)).any()
    np.testing.assert_allclose(metrics.data_dimensionality, D.sum(1), rtol=1e-5)
    np.testing.assert_allclose(metrics.data_dimensionality_max, D.max(1), rtol=1e-5)
    none = pq.read_table(tmp_path / "s" / "metrics" / f"part-{'e' * 16}.parquet").to_pandas()
    assert none.data_dimensionality.isna().all() and none.data_dimensionality_max.isna().all()


def test_a_process_that_read_the_store_exits_cleanly(tmp_path):
    """`tms status` and the driver read points.parquet and the done markers, then exit. Arrow's
    dataset scanner on a buffer left native threads that aborted ~20 % of such processes at exit
    (SIGABRT, "terminate called without an active exception") after their output was printed."""
    store = SweepStore(str(tmp_path / "s"))
    n = 300
    store.write_table("points.parquet", pa.table({
        "point_id": [f"p{i}" for i in range(n)], "trial_key": [f"t{i // 10}" for i in range(n)],
        "status": ["done"] * n, **{f"data.c{j}": np.linspace(0, 1, n) for j in range(40)}}))
    for t in range(4):
        store.write_table(f"done/t{t}.parquet", conform(pa.table({"point_id": [f"p{t}"], "status": ["done"]}),
                                                        DONE_SCHEMA))
    code = ("import sys; from sweeps.store import SweepStore; s = SweepStore(sys.argv[1]); "  # as tms status reads
            "assert s.read_done().num_rows == 4 and s.read_table('points.parquet').num_rows == 300")
    results = []
    for _ in range(8):  # two at a time: a crowded machine hides the race
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        results += [(p.wait(timeout=120), p.stderr.read().strip()[-300:]) for p in procs]
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0] != 0][:2]
