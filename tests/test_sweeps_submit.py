"""`tms submit` (and plain `ray job submit`) to a real `ray start --head` with token authentication."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import FAST, processes, read_store, store_files, tms

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # real sweeps on Ray: `make test-fast` leaves them out


RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_pids(temp_dir: str) -> list[int]:
    """Processes of the head started with `temp_dir`, and all their descendants."""
    procs = processes()
    found = {p.pid for p in procs if temp_dir in p.cmdline}
    frontier = list(found)
    while frontier:
        pid = frontier.pop()
        children = [p.pid for p in procs if p.ppid == pid and p.pid not in found]
        found.update(children)
        frontier.extend(children)
    return sorted(found)


def _stop_head(temp_dir: str) -> None:
    """Stop exactly this head (never `ray stop`, which would stop every cluster on the machine)."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in _head_pids(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while _head_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)


def _wait_for_job_agent(address: str, env: dict) -> None:
    """A head accepts jobs once its job agent is up (until then: "No available agent"); `tms
    submit` waits for it itself, plain `ray job submit` does not."""
    deadline = time.monotonic() + 120
    while True:
        probe = subprocess.run([RAY, "job", "submit", "--address", address, "--", "true"], env=env,
                               capture_output=True, text=True, timeout=120)
        if probe.returncode == 0 or time.monotonic() > deadline:
            assert probe.returncode == 0, probe.stdout + probe.stderr
            return
        time.sleep(2.0)


@pytest.fixture(scope="module")
def head():
    temp_dir = tempfile.mkdtemp(prefix="/tmp/tmsray-")  # short: Ray puts unix sockets under it
    token = secrets.token_hex(16)
    dashboard = _free_port()
    # The head is a node of the cluster: it runs job entrypoints (`python`, `tms`) with the
    # project's environment on its PATH, as a real cluster node has it installed.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    started = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
                              f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                             env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        _wait_for_job_agent(f"http://127.0.0.1:{dashboard}", env)
        yield {"address": f"http://127.0.0.1:{dashboard}", "token": token, "temp_dir": temp_dir}
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_tms_submit_runs_the_sweep_on_the_cluster_with_token_auth(head, store):
    env = {"RAY_AUTH_TOKEN": head["token"]}
    env_without_mode = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([sys.executable, "-m", "tms", "submit", "--address", head["address"], "--wait",
                           f"store={store}", *FAST, "sweep.name=submitted", "data.density=1.0,0.5"],
                          env={**env_without_mode, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCEEDED" in proc.stderr and "[submitted] 2 done" in proc.stdout
    s = read_store(store / "submitted")
    assert (s["points"].status == "done").all() and len(s["points"]) == 2
    assert s["done"].node_ip.eq("127.0.0.1").all()
    # the token is in no output, no store file and no log the job wrote on the head
    assert head["token"] not in proc.stdout + proc.stderr
    logs = [p for p in Path(head["temp_dir"]).rglob("*.log") if "job-driver" in p.name]
    assert logs, "found no job driver log on the head"
    for path in store_files(store) + logs:
        assert head["token"].encode() not in path.read_bytes(), path


def test_plain_ray_job_submit_runs_tms_sweep(head, store):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head["token"]}
    proc = subprocess.run([RAY, "job", "submit", "--address", head["address"], "--",
                           "tms", "sweep", f"store={store}", *FAST, "sweep.name=plain", "data.density=1.0,0.5"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (read_store(store / "plain")["points"].status == "done").all()


def test_a_wrong_token_is_refused_in_one_line(head, store):
    proc = tms("submit", "--address", head["address"], f"store={store}", *FAST, "sweep.name=refused",
               env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: --address: ") and "Authentication failed" in proc.stderr
    assert "not-the-token" not in proc.stderr and not store.exists()


def test_submit_needs_a_store_every_node_can_reach(store):
    proc = tms("submit", "--address", "http://127.0.0.1:9", "store=runs", *FAST)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: store: a cluster sweep writes from every node, so it needs shared storage")
