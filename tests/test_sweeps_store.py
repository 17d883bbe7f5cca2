"""The store writer: atomic files, orphan clean-up, the driver's lock, a trial's rows."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import toymodels
from sweeps.schema import UsageError
from sweeps.store import METRICS_SCHEMA, Store, TrialWriter, _proc_start
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig


def _metrics(point: str, steps: int) -> pa.Table:
    return pa.table({"point_id": [point] * steps, "step": list(range(steps)), "loss": [0.5] * steps,
                     "train_loss": [0.5] * steps, "frob": [1.0] * steps, "d_star": [1.0] * steps,
                     "lr": [1e-3] * steps, "reconstruction": [0.5] * steps, "penalty": [0.0] * steps},
                    schema=METRICS_SCHEMA)


def test_a_part_file_is_invisible_until_committed(tmp_path):
    store = Store(str(tmp_path / "s"))
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


def test_orphans_of_uncommitted_trials_are_removed_committed_ones_kept(tmp_path):
    store = Store(str(tmp_path / "s"))
    for key in ("done1", "crashed"):
        store.write_table(f"metrics/part-{key}.parquet", _metrics(key, 4))
        store.write_table(f"features/part-{key}.parquet", _metrics(key, 4))
    store.write_table("done/done1.parquet", pa.table({"point_id": ["done1"]}))
    store.write_bytes("features/.part-x.parquet.1234abcd.tmp", b"half a file")
    assert store.clean_orphans() == 3
    names = sorted(str(p.relative_to(tmp_path / "s")) for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert names == ["done/done1.parquet", "features/part-done1.parquet", "metrics/part-done1.parquet"]
    assert store.clean_orphans() == 0


def test_lock_refuses_a_live_driver_and_takes_over_a_dead_ones(tmp_path):
    store = Store(str(tmp_path / "s"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        info = {"host": socket.gethostname(), "pid": holder.pid, "created": _proc_start(holder.pid),
                "since": "2026-01-01T00:00:00+00:00"}
        store.write_json(".lock", info)
        with pytest.raises(UsageError, match=f"already being run by pid {holder.pid}"):
            store.lock().acquire()
    finally:
        holder.kill()
        holder.wait()
    with store.lock():  # the holder is gone: its lock is stale and taken over
        assert json.loads((tmp_path / "s" / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "s" / ".lock").exists()
    # a lock from another host cannot be checked, so it is refused with the way out
    store.write_json(".lock", {"host": "elsewhere", "pid": 1, "created": 0.0, "since": "then"})
    with pytest.raises(UsageError, match=r"on elsewhere .* delete .*\.lock"):
        store.lock().check()


def test_a_trials_rows_match_the_trainer_and_the_store_contract(tmp_path):
    points = [PointSpec(model=ModelConfig(kind="relu_out", n_features=4, n_hidden=2),
                        data=DataConfig(density=d, importance_decay=0.8),
                        train=TrainConfig(steps=60, lr=lr, log_checkpoints=3, linear_checkpoints=2), seed=s)
              for d, lr, s in ((1.0, 1e-3, 0), (0.1, 1e-3, 1), (0.5, 1e30, 2))]
    ids = ["a" * 16, "b" * 16, "c" * 16]
    store = Store(str(tmp_path / "s"))
    writer = TrialWriter(store, "k" * 16, ids)
    seen = []

    def callback(ck):
        seen.append(ck)
        writer.add(ck)

    result = toymodels.train(points, compile=False, callback=callback)
    writer.commit_metrics()
    done = writer.commit_rest(result, {"node_id": "n", "device": "cpu", "attempt": 1})
    steps = toymodels.checkpoint_steps(points[0].train)

    metrics = pq.read_table(tmp_path / "s" / "metrics" / f"part-{'k' * 16}.parquet").to_pandas()
    assert len(metrics) == 3 * len(steps) and metrics.groupby("point_id").step.apply(list).to_dict() == \
        {i: steps for i in ids}
    b = metrics[metrics.point_id == ids[1]]
    np.testing.assert_allclose(b.loss.to_numpy(), [ck.loss[1] for ck in seen], rtol=1e-6)
    np.testing.assert_allclose(b.d_star.to_numpy(), [ck.d_star[1] for ck in seen], rtol=1e-6)

    features = pq.read_table(tmp_path / "s" / "features" / f"part-{'k' * 16}.parquet").to_pandas()
    assert len(features) == 3 * len(steps) * 4
    last = features[(features.point_id == ids[1]) & (features.step == steps[-1])].sort_values("feature")
    np.testing.assert_allclose(last.dimensionality, seen[-1].dimensionality[1], rtol=1e-6)
    np.testing.assert_allclose(last.importance, result.importance[1], rtol=1e-6)
    np.testing.assert_allclose(last.density, result.density[1], rtol=1e-6)

    weights = pq.read_table(tmp_path / "s" / "weights" / f"part-{'k' * 16}.parquet").to_pandas()
    assert len(weights) == 3 * len(steps) and sorted(set(weights.step)) == steps   # weights over time
    final = weights[weights.step == steps[-1]].set_index("point_id").loc[ids]
    np.testing.assert_allclose(np.asarray(final.W.iloc[0]).reshape(2, 4), result.W[0], rtol=1e-6)
    assert weights.W2.isna().all() and set(weights.n_hidden) == {2}
    early = weights[(weights.step == steps[1]) & (weights.point_id == ids[1])]
    np.testing.assert_allclose(np.asarray(early.W.iloc[0]).reshape(2, 4), seen[1].W[1], rtol=1e-6)
    assert metrics.penalty.eq(0).all() and np.allclose(metrics.loss, metrics.reconstruction, equal_nan=True)

    np.testing.assert_allclose(done.column("selection_loss").to_numpy(), result.selection_loss)
    assert done.column("status").to_pylist() == ["done", "done", "diverged"]
    assert done.column("diverged_step").to_pylist()[:2] == [None, None]
    assert done.column("diverged_step").to_pylist()[2] >= 0
    assert pq.read_table(tmp_path / "s" / "done" / f"{'k' * 16}.parquet").num_rows == 3


def test_weights_history_off_stores_the_final_weights_only(tmp_path):
    points = [PointSpec(model=ModelConfig(kind="abs", n_features=4, n_hidden=3), data=DataConfig(density=0.5),
                        train=TrainConfig(steps=20, log_checkpoints=3, linear_checkpoints=2, selection_rows=1024), seed=s)
              for s in range(2)]
    store = Store(str(tmp_path / "s"))
    writer = TrialWriter(store, "w" * 16, ["x" * 16, "y" * 16], weights_history=False)
    result = toymodels.train(points, compile=False, callback=writer.add)
    writer.commit_metrics()
    writer.commit_rest(result, {})
    weights = pq.read_table(tmp_path / "s" / "weights" / f"part-{'w' * 16}.parquet").to_pandas()
    assert list(weights.step) == [20, 20]
    np.testing.assert_allclose(np.asarray(weights.W2[1]).reshape(4, 3), result.W2[1], rtol=1e-6)
