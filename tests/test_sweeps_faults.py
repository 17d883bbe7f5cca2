"""Trial workers killed with SIGKILL: the driver never crashes."""

import os
import signal
import time

import pytest

from conftest import FAST, end_session, processes, read_store, tms_background

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # real sweeps on Ray: `make test-fast` leaves them out



def _trial_workers(sid: int) -> list[int]:
    return [p.pid for p in processes() if p.sid == sid and "ImplicitFunc" in p.cmdline]


def test_killed_workers_never_crash_the_driver(tmp_path):
    """The first trial's worker is killed as soon as it appears, and so is its retry's: that
    trial dies twice without ever reporting (Tune then has no config in its result, which once
    crashed the driver). Its points are marked failed, the other trial commits, and the driver
    exits 1 with one line per failure (the next run retrains failed points: test_sweeps_local)."""
    store = tmp_path / "store"
    args = ["sweep", f"store={store}", *FAST, "train.steps=1000", "sweep.name=faults", "data.density=1.0,0.5",
            "sweep.points_per_trial=1", "ray.max_failures=1", "ray.max_concurrent_trials=1"]
    proc = tms_background(*args, log=tmp_path / "run.log")
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(killed) < 2 and proc.poll() is None and time.monotonic() < deadline:
            for pid in _trial_workers(proc.pid):
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)
        rc = proc.wait(timeout=240)
    finally:
        end_session(proc.pid)
    log = (tmp_path / "run.log").read_text()
    assert len(killed) == 2, log
    assert rc == 1, log
    assert "Traceback" not in log and "TypeError" not in log
    assert "failed 2 times, its 1 points are marked failed" in log, log
    s = read_store(store / "faults")
    assert sorted(s["points"].status) == ["done", "failed"]
    assert len(s["done"]) == 1 and not (store / "faults" / "_staging").exists()
