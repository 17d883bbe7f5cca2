"""Ray placement: a simulated two-node cluster with fake GPUs, and loopback-only embedded Ray."""

import pandas as pd
import pytest

from conftest import FAST, read_store

from tms.cli import main

pytestmark = pytest.mark.slow  # real sweeps on Ray: `make test-fast` leaves them out


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
    try:
        cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _max_overlap(frame: pd.DataFrame) -> int:
    events = sorted([(t, 1) for t in frame.started_at] + [(t, -1) for t in frame.finished_at],
                    key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_fractional_gpus_pack_trials_onto_both_nodes(two_nodes, store):
    rc = main(["sweep", f"store=file://{store}", *FAST, "train.steps=600", "sweep.name=gpus", f"ray.address={two_nodes.address}",
               "ray.gpus_per_trial=0.25", "ray.cpus_per_trial=0.5", "sweep.points_per_trial=1",
               "data.density=1.0,0.7,0.5,0.3,0.2,0.1,0.05,0.02"])
    assert rc == 0
    done = read_store(store / "gpus")["done"]
    per_trial = done.drop_duplicates("trial_key")
    assert len(per_trial) == 8
    assert (per_trial.gpu_fraction == 0.25).all(), "each trial holds a quarter of a GPU"
    assert per_trial.node_id.nunique() == 2, "trials ran on both nodes"
    assert (per_trial.gpu_ids != "[]").all(), "Ray assigned each trial a GPU id"
    assert (per_trial.device == "cpu").all(), "fake GPUs: torch sees no CUDA, the trainer falls back to CPU"
    shared = max(_max_overlap(g) for _, g in per_trial.groupby(["node_id", "gpu_ids"]))
    assert 2 <= shared <= 4, f"up to four trials share one GPU at a time (saw {shared})"


def test_embedded_ray_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from sweeps.cluster import connect

    started = connect({"address": None, "host": "127.0.0.1", "num_cpus": 1, "num_gpus": 0})
    import psutil  # Ray's vendored copy, importable once ray is
    import ray

    try:
        assert started
        listening = set()
        for proc in psutil.Process().children(recursive=True):
            try:
                listening |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        assert listening, "found no listening Ray server"
        assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    finally:
        ray.shutdown()
