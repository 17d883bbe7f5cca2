"""Ctrl-C, three drivers at once, SIGKILL of the driver (its workers left alive), a stale
worker, a stale points.parquet — then the same command finishes the sweep, every row once."""

import json
import os
import shutil
import signal

import pandas as pd
import pytest

from conftest import FAST, end_session, n_checkpoints, read_store, store_files, tms, tms_background, wait_for
from sweeps.lock import running
from sweeps.store import SweepStore

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # real sweeps on Ray: `make test-fast` leaves them out


def _done_rows(sweep_dir) -> int:
    done = sweep_dir / "done"
    return len([p for p in done.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")]) \
        if done.exists() else 0


def _driver(sweep_dir) -> dict:
    return json.loads((sweep_dir / ".driver.json").read_text())


def test_interrupt_then_kill_then_resume_writes_every_row_exactly_once(tmp_path):
    store = tmp_path / "store"
    sweep_dir = store / "resume"
    sweep = SweepStore(str(sweep_dir))
    # 10 one-point trials of 800 steps: long enough to be stopped half-way, twice
    args = ["sweep", f"store={store}", *FAST, "train.steps=800", "sweep.name=resume",
            "data.density=1.0,0.5,0.2,0.1,0.05", "sweep.seeds=2", "sweep.points_per_trial=1"]

    # 1. Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it)
    a = tms_background(*args, log=tmp_path / "a.log")
    try:
        wait_for(lambda: _done_rows(sweep_dir) >= 1, 180, "the first finished trial")
        os.killpg(a.pid, signal.SIGINT)
        assert a.wait(timeout=120) == 130
    finally:
        end_session(a.pid)
    log_a = (tmp_path / "a.log").read_text()
    assert "interrupted; run the same command again to resume" in log_a and "Traceback" not in log_a
    assert not running(sweep) and _driver(sweep_dir).get("ended"), "an interrupted driver releases its lock"
    s = read_store(sweep_dir)
    done_ids = set(s["done"].point_id)
    assert 1 <= len(done_ids) < 10
    # reconciled on the way out: points.parquet says exactly what the markers say
    assert set(s["points"][s["points"].status == "done"].point_id) == done_ids
    assert not (sweep_dir / "_staging").exists()
    stale_points = (sweep_dir / "points.parquet").read_bytes()

    # 2. three drivers started together: exactly one runs, the others are refused at once
    logs = [tmp_path / f"b{i}.log" for i in range(3)]
    drivers = [tms_background(*args, log=log) for log in logs]
    try:
        wait_for(lambda: sum(d.poll() is not None for d in drivers) >= 2, 120, "two drivers refused")
        runners = [d for d in drivers if d.poll() is None]
        assert len(runners) == 1, [d.poll() for d in drivers]
        b = runners[0]
        for d, log in zip(drivers, logs):
            if d is not b:
                text = log.read_text()
                assert d.returncode == 2 and text.count("\n") == 1, text
                assert f"is already being run by pid {b.pid} on " in text, text
        first = _done_rows(sweep_dir)
        wait_for(lambda: _done_rows(sweep_dir) > first, 180, "a trial committed by the second driver")
        os.kill(b.pid, signal.SIGSTOP)  # the driver commits nothing more, however fast its trials run
        status = tms("status", str(sweep_dir))
        assert b.poll() is None, "the rerun finished before it could be stopped"
        assert status.returncode == 0 and f"driver: running, pid {b.pid} on " in status.stdout, status.stdout
        killed_generation = _driver(sweep_dir)["generation"]
        os.kill(b.pid, signal.SIGKILL)  # the driver only: its Ray workers live on for a while
        b.wait(timeout=30)
        assert not running(sweep), "the kernel freed the killed driver's lock at once"
        assert "ended" not in _driver(sweep_dir)
        status = tms("status", str(sweep_dir))
        done = _done_rows(sweep_dir)
        assert status.stdout.startswith(f"sweep resume: 10 points: {done} done, 0 diverged, 0 failed, "
                                        f"{10 - done} pending"), status.stdout
        assert "driver: not running; the last one" in status.stdout and "killed" in status.stdout

        # 3. at once, the same command finishes the sweep while the old workers may still stage rows
        killed_at = _done_rows(sweep_dir)
        assert killed_at < 10
        d = tms(*args)
    finally:
        for proc in drivers:
            end_session(proc.pid)
    assert d.returncode == 0, d.stdout + d.stderr
    assert f"resuming with {killed_at} done" in d.stderr
    s = read_store(sweep_dir)
    ck = n_checkpoints(steps=800)
    assert len(s["done"]) == 10 and s["done"].point_id.is_unique
    assert len(s["metrics"]) == 10 * ck and not s["metrics"].duplicated(["point_id", "step"]).any()
    assert len(s["features"]) == 10 * ck * 5
    assert len(s["weights"]) == 10 * ck and not s["weights"].duplicated(["point_id", "step"]).any()
    assert (s["points"].status == "done").all() and len(s["points"]) == 10
    assert not [p for p in store_files(sweep_dir) if p.name.endswith(".tmp")]
    assert not running(sweep) and not (sweep_dir / "_staging").exists()
    markers = {p.name: p.read_bytes() for p in (sweep_dir / "done").iterdir()}
    _each_part_has_its_marker(sweep_dir, set(s["done"].trial_key))
    # every commit came from a driver of its own generation
    assert set(s["done"].generation) <= set(range(1, _driver(sweep_dir)["generation"] + 1))

    # 4. a worker of the killed driver stages a trial after all that; points.parquet went stale
    key = s["done"].trial_key.iloc[0]
    staged = sweep_dir / "_staging" / f"g{killed_generation}-{key}-0badc0de"
    staged.mkdir(parents=True)
    for part in ("metrics", "features", "weights"):
        shutil.copy(sweep_dir / part / f"part-{key}.parquet", staged / f"{part}.parquet")
    shutil.copy(sweep_dir / "done" / f"{key}.parquet", staged / "done.parquet")
    (sweep_dir / "points.parquet").write_bytes(stale_points)
    assert (pd.read_parquet(sweep_dir / "points.parquet").status == "pending").any()
    e = tms(*args)
    assert e.returncode == 0 and "all 10 points are done, 1 stale files removed" in e.stderr, e.stderr
    assert {p.name: p.read_bytes() for p in (sweep_dir / "done").iterdir()} == markers, "nothing committed twice"
    assert not (sweep_dir / "_staging").exists()
    assert (pd.read_parquet(sweep_dir / "points.parquet").status == "done").all(), \
        "the all-done path reconciles points.parquet too"
    assert json.loads((sweep_dir / "sweep.json").read_text())["counts"]["done"] == 10


def _each_part_has_its_marker(sweep_dir, committed: set) -> None:
    for part in ("metrics", "features", "weights"):
        keys = {p.name[len("part-"):-len(".parquet")] for p in (sweep_dir / part).glob("part-*.parquet")}
        assert keys == committed, f"{part}/ holds files of uncommitted trials"
