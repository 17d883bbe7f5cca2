"""Shared helpers for the sweep tests: the `tms` command, store readers, process clean-up.

Every Ray the tests start is theirs alone (address="local", a Cluster, or a `ray start` head
with its own temp dir) and on loopback; W&B runs offline or disabled, never on the network.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray servers on 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two test workers on the cores: one OpenMP thread each, as Ray gives its trial
    # workers (two processes of two spinning threads on 2 cores ran the science tests ~10x slower)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

# A sweep small enough for 2 loaded cores: 300 steps, 11 checkpoints, no torch.compile.
FAST = ["train.steps=300", "train.log_checkpoints=5", "train.linear_checkpoints=4", "train.selection_rows=8192",
        "ray.compile=false",
        "ray.num_cpus=2", "wandb.mode=disabled"]


def tms(*args: str, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 300):
    """Run `tms ARGS` as a user would (a fresh process); returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tms", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def tms_background(*args: str, cwd: Path | str | None = None, env: dict | None = None, log: Path | None = None):
    """Start `tms ARGS` in its own session (so everything it spawns can be found and ended)."""
    full_env = {**os.environ, **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "tms", *args], cwd=cwd or ROOT, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Groups for pytest-xdist's `--dist loadgroup` (`make test`): the tests marked `serial` (they
    start Ray, servers or racing drivers, and scan or kill processes) all run in one worker, one at
    a time, so no two overlap; every other module runs whole in one worker, so its fixtures run once."""
    for item in items:
        group = "serial" if item.get_closest_marker("serial") else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Stop, rather than run the serial tests side by side, when loadgroup's groups did not take."""
    if node.config.getvalue("dist") == "loadgroup" and not all("@" in i for i in ids):
        pytest.exit("pytest-xdist's --dist loadgroup did not group the tests (pytest-dev/pytest-xdist#1386):"
                    " install pytest<9.2, as pyproject.toml asks", returncode=3)


@dataclass(frozen=True)
class Proc:
    """One live process, as /proc shows it."""

    pid: int
    ppid: int
    sid: int
    cmdline: str


def processes() -> list[Proc]:
    """Every live (non-zombie) process of this machine: the one /proc scanner of the tests."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            if fields[0] != "Z":
                found.append(Proc(int(entry), int(fields[1]), os.getsid(int(entry)), cmdline))
        except (OSError, IndexError, ValueError):
            continue
    return found


def session_pids(sid: int) -> list[int]:
    """Live processes of the session `sid` (one we started with start_new_session)."""
    return [p.pid for p in processes() if p.sid == sid]


def kill_pids(pids) -> None:
    """SIGKILL each of ``pids``; one that has already gone is fine."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def end_session(sid: int, wait: float = 10.0) -> None:
    """SIGKILL, by pid, whatever is left of a session we started; wait until it is gone."""
    deadline = time.monotonic() + wait
    while True:
        pids = session_pids(sid)
        if not pids or time.monotonic() > deadline:
            break
        kill_pids(pids)
        time.sleep(0.2)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_store(sweep_dir: Path | str) -> dict:
    """Every table of a sweep directory (a path or a URI), as pandas frames (hidden/temporary files skipped)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if "://" in str(sweep_dir):
        fs, path = pafs.FileSystem.from_uri(str(sweep_dir))
    else:
        fs, path = pafs.LocalFileSystem(), str(sweep_dir)
    out = {"points": pq.read_table(f"{path}/points.parquet", filesystem=fs).to_pandas()}
    for name in ("metrics", "features", "weights", "done"):
        found = fs.get_file_info(f"{path}/{name}").type != pafs.FileType.NotFound
        out[name] = ds.dataset(f"{path}/{name}", filesystem=fs, format="parquet").to_table().to_pandas() \
            if found else None
    return out


def wandb_runs(sweep_dir: Path) -> list[dict]:
    """Every offline W&B run under the sweep, oldest first, read back from its files."""
    runs = []
    for run_dir in sorted((sweep_dir / "wandb").glob("offline-run-*")):
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        run = next(r["run"] for r in records if r["type"] == "run")
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        exit_code = next((r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"), None)
        tables = {p.name.split("_")[0]: json.loads(p.read_text())
                  for p in (run_dir / "files" / "media" / "table").glob("*.table.json")}
        runs.append({"run": run, "history": history, "tables": tables, "exit_code": exit_code})
    return runs


def n_checkpoints(steps: int = 300, log: int = 5, linear: int = 4) -> int:
    from toymodels import TrainConfig, checkpoint_steps

    return len(checkpoint_steps(TrainConfig(steps=steps, log_checkpoints=log, linear_checkpoints=linear)))


def assert_every_row_once(s: dict, points: int, steps: int, n_features: int = 5) -> None:
    """A finished store ``s`` (read_store) holds each of ``points`` points once, with exactly one
    row per checkpoint (features: one per feature) of a ``steps``-step run in every table."""
    ck = n_checkpoints(steps=steps)
    assert len(s["done"]) == points and s["done"].point_id.is_unique
    assert (s["points"].status == "done").all() and len(s["points"]) == points
    assert len(s["metrics"]) == points * ck and not s["metrics"].duplicated(["point_id", "step"]).any()
    assert len(s["features"]) == points * ck * n_features and len(s["weights"]) == points * ck


def store_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


@pytest.fixture(autouse=True)
def _parallel_tests_leave_no_process(request):
    """A test not marked `serial` may run beside the serial ones, so it must start nothing that
    outlives it (a Ray, a server, a driver): a child process it started and left running fails it."""
    if request.node.get_closest_marker("serial") is not None:
        yield
        return
    before = {p.pid for p in processes() if p.ppid == os.getpid()}
    yield
    left = [p for p in processes() if p.ppid == os.getpid() and p.pid not in before]
    assert not left, f"left running by a test not marked serial: {[p.cmdline[:80] for p in left]}"


@pytest.fixture
def store(tmp_path) -> Path:
    """A store root that does not exist yet (so a test can see whether anything was created)."""
    return tmp_path / "store"
