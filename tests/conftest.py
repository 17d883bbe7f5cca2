"""Shared helpers for the sweep tests: the `tms` command, store readers, process clean-up.

Every Ray the tests start is theirs alone (address="local", a Cluster, or a `ray start` head
with its own temp dir) and on loopback; W&B runs offline or disabled, never on the network.
"""

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


def end_session(sid: int, wait: float = 10.0) -> None:
    """SIGKILL, by pid, whatever is left of a session we started; wait until it is gone."""
    deadline = time.monotonic() + wait
    while True:
        pids = session_pids(sid)
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_store(sweep_dir: Path) -> dict:
    """Every table of a sweep directory, as pandas frames (hidden/temporary files skipped)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = {"points": pq.read_table(sweep_dir / "points.parquet").to_pandas()}
    for name in ("metrics", "features", "weights", "done"):
        path = sweep_dir / name
        out[name] = ds.dataset(path, format="parquet").to_table().to_pandas() if path.exists() else None
    return out


def n_checkpoints(steps: int = 300, log: int = 5, linear: int = 4) -> int:
    from toymodels import TrainConfig, checkpoint_steps

    return len(checkpoint_steps(TrainConfig(steps=steps, log_checkpoints=log, linear_checkpoints=linear)))


def store_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


@pytest.fixture
def store(tmp_path) -> Path:
    """A store root that does not exist yet (so a test can see whether anything was created)."""
    return tmp_path / "store"
