"""Ray placement on a simulated two-node cluster (fake GPUs; a worker node lost mid-sweep) and
loopback-only embedded Ray."""

import re

import pandas as pd
import pytest

from conftest import FAST, end_session, n_checkpoints, processes, read_store, tms, tms_background, wait_for

from tms.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # real sweeps on Ray: `make test-fast` leaves them out


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
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


def test_embedded_ray_listens_on_loopback_only_and_stops_whole(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from sweeps.cluster import connect, stop_embedded

    started = connect({"address": None, "host": "127.0.0.1", "num_cpus": 1, "num_gpus": 0})
    import psutil  # Ray's vendored copy, importable once ray is
    import ray

    try:
        assert started
        servers = psutil.Process().children(recursive=True)
        pids = {p.pid for p in servers}
        listening = set()
        for proc in servers:
            try:
                listening |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        assert listening, "found no listening Ray server"
        assert listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert any("monitor.py" in p.cmdline for p in processes() if p.pid in pids), "the autoscaler monitor runs"
    finally:
        stop_embedded()
    assert not ray.is_initialized()
    # the raylet's workers and agents exit with it
    wait_for(lambda: not [p for p in processes() if p.pid in pids], 10, "every process Ray started to exit")


def test_losing_a_worker_node_mid_sweep_still_completes_the_sweep_every_row_once(tmp_path, store):
    """A simulated two-node cluster; the worker node is removed while it trains: Ray Tune retries
    its trials on the node left, and the store ends complete with nothing lost or duplicated.

    A retry that Ray places on the node while it is still being removed fails before it runs, and
    Tune does not retry a trial that has not started: its points are marked failed, and the same
    command trains them (docs/clusters.md, "Node loss")."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    sweep_dir = store / "nodeloss"
    driver = None
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        args = ["sweep", f"store={store}", *FAST, "train.steps=600", "sweep.name=nodeloss",
                f"ray.address={cluster.address}", "sweep.points_per_trial=1", "sweep.seeds=2", "data.density=1.0,0.3,0.1"]
        driver = tms_background(*args, log=tmp_path / "driver.log")
        wait_for(lambda: len(list((sweep_dir / "done").glob("*.parquet"))) >= 1 if (sweep_dir / "done").exists()
                 else False, 240, "the first commit")
        cluster.remove_node(worker)
        code = driver.wait(timeout=400)
        log = (tmp_path / "driver.log").read_text()
        if code != 0:  # a retry started on the node being removed
            assert code == 1 and re.search(r"points are marked failed: .*node", log), log
            rerun = tms(*args)
            assert rerun.returncode == 0, rerun.stderr
            assert "6 done, 0 diverged, 0 failed, 0 pending of 6 points" in rerun.stderr, rerun.stderr
    finally:
        if driver is not None:
            end_session(driver.pid)
        ray.shutdown()
        cluster.shutdown()
    assert "failed (attempt 1), retrying" in log, "trials of the lost node were retried"
    s = read_store(sweep_dir)
    ck = n_checkpoints(steps=600)
    assert len(s["done"]) == 6 and s["done"].point_id.is_unique and (s["points"].status == "done").all()
    assert len(s["metrics"]) == 6 * ck and not s["metrics"].duplicated(["point_id", "step"]).any()
    assert len(s["features"]) == 6 * ck * 5 and len(s["weights"]) == 6 * ck
    assert not (sweep_dir / "_staging").exists()


def test_the_driver_waits_for_nodes_that_can_run_a_trial_to_join():
    """ray.wait_for_resources_s: a head without CPUs (as on KubeRay) is refused at once without
    it, and accepted once a worker node joins with it."""
    import threading
    import time

    import ray
    from ray.cluster_utils import Cluster

    from sweeps.cluster import check_resources
    from sweeps.errors import UsageError

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        ray.init(address=cluster.address)
        cfg = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "wait_for_resources_s": 0.0}
        with pytest.raises(UsageError, match="ray.cpus_per_trial: 1 CPUs per trial, but no node has more than 0"):
            check_resources(cfg, 1000)
        outcome = []
        waiting = threading.Thread(target=lambda: outcome.append(
            check_resources({**cfg, "wait_for_resources_s": 120.0}, 1000)))
        waiting.start()
        time.sleep(2.0)
        assert waiting.is_alive() and not outcome, "it waits while no node can run a trial"
        cluster.add_node(num_cpus=1)
        waiting.join(timeout=60)
        assert outcome == [None], "accepted once a node with a CPU joined"
    finally:
        ray.shutdown()
        cluster.shutdown()
