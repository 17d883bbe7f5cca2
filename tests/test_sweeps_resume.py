"""Ctrl-C, a second driver, SIGKILL of the driver, then the same command finishes the sweep."""

import json
import os
import signal

from conftest import FAST, end_session, n_checkpoints, read_store, store_files, tms, tms_background, wait_for


def _done_rows(sweep_dir) -> int:
    done = sweep_dir / "done"
    return len([p for p in done.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")]) \
        if done.exists() else 0


def test_interrupt_then_kill_then_resume_writes_every_row_exactly_once(tmp_path):
    store = tmp_path / "store"
    sweep_dir = store / "resume"
    # 12 one-point trials of 1,000 steps: long enough to be stopped half-way, twice
    args = ["sweep", f"store={store}", *FAST, "train.steps=1000", "sweep.name=resume",
            "data.density=1.0,0.5,0.2,0.1,0.05,0.02", "sweep.seeds=2", "sweep.points_per_trial=1"]

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
    assert not (sweep_dir / ".lock").exists(), "an interrupted driver releases its lock"
    points = read_store(sweep_dir)["points"]
    done_ids = set(read_store(sweep_dir)["done"].point_id)
    assert 1 <= len(done_ids) < 12
    assert set(points[points.status == "done"].point_id) <= done_ids
    assert (points[~points.point_id.isin(done_ids)].status.isin(["pending", "done"])).all()

    # 2. rerun; while it runs a second driver on the same sweep is refused; then SIGKILL the first
    first = len(done_ids)
    b = tms_background(*args, log=tmp_path / "b.log")
    try:
        wait_for(lambda: (sweep_dir / ".lock").exists() and json.loads((sweep_dir / ".lock").read_text()),
                 120, "the rerun to take the lock")
        c = tms(*args)
        assert c.returncode == 2 and c.stderr.count("\n") == 1
        assert f"already being run by pid {b.pid}" in c.stderr
        wait_for(lambda: _done_rows(sweep_dir) > first, 180, "a trial finished by the rerun")
        assert b.poll() is None, "the rerun finished before it could be killed"
        os.kill(b.pid, signal.SIGKILL)
        b.wait(timeout=30)
    finally:
        end_session(b.pid)
    assert (sweep_dir / ".lock").exists(), "a killed driver leaves its (now stale) lock behind"
    killed_at = _done_rows(sweep_dir)
    assert killed_at < 12

    # 3. the same command finishes the sweep: done points skipped, nothing written twice
    d = tms(*args)
    assert d.returncode == 0, d.stdout + d.stderr
    assert f"resuming with {killed_at} done" in d.stderr
    s = read_store(sweep_dir)
    ck = n_checkpoints(steps=1000)
    assert len(s["done"]) == 12 and s["done"].point_id.is_unique
    assert len(s["metrics"]) == 12 * ck and not s["metrics"].duplicated(["point_id", "step"]).any()
    assert len(s["features"]) == 12 * ck * 5
    assert len(s["weights"]) == 12 * ck and not s["weights"].duplicated(["point_id", "step"]).any()
    assert (s["points"].status == "done").all() and len(s["points"]) == 12
    assert not [p for p in store_files(sweep_dir) if p.name.endswith(".tmp")]
    assert not (sweep_dir / ".lock").exists()
    for part in ("metrics", "features", "weights"):
        keys = {p.name[len("part-"):-len(".parquet")] for p in (sweep_dir / part).glob("part-*.parquet")}
        assert keys == set(s["done"].trial_key), f"{part}/ holds files of uncommitted trials"
