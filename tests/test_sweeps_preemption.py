"""Preemption without losing work: a trial saves its training state as a Ray Tune checkpoint and,
retried (its worker killed) or restored (its whole run killed, the same command run again),
continues from it — and its rows equal those of an uninterrupted run, bit for bit on CPU."""

import json
import os
import signal

import pandas as pd
import pytest
import torch

from conftest import FAST, end_session, processes, read_store, tms, tms_background, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # real sweeps on Ray


GRID = [*FAST, "train.steps=3000", "model.n_features=5", "model.n_hidden=2", "data.density=1.0,0.3",
        "sweep.seeds=2", "sweep.points_per_trial=4", "sweep.checkpoint_every_s=0"]  # one trial
ROWS = {"metrics": ["point_id", "step"], "features": ["point_id", "step", "feature"], "weights": ["point_id", "step"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same 4 points trained without interruption."""
    store = tmp_path_factory.mktemp("preempt") / "store"
    proc = tms("sweep", f"store={store}", *GRID, "sweep.name=reference")
    assert proc.returncode == 0, proc.stderr
    return read_store(store / "reference")


def _whole_states(sweep_dir) -> dict:
    """{checkpoint folder: step} of the training states saved in the sweep's Tune checkpoints
    that read whole; one Tune is still copying in is left out."""
    states = {}
    for meta in sweep_dir.glob("ray/*/*/checkpoint_*/state.json"):
        try:
            step = json.loads(meta.read_text())["step"]
            torch.load(meta.parent / "train_state.pt", weights_only=False)
        except (OSError, ValueError, EOFError, RuntimeError):
            continue
        states[meta.parent] = step
    return states


def _saved_step(sweep_dir) -> int:
    """The largest step of a whole training state saved in the sweep (0 if none)."""
    return max(_whole_states(sweep_dir).values(), default=0)


def _plant_partial_checkpoints(sweep_dir) -> int:
    """Beside the trial's newest whole saved state, two newer ones cut short as a run killed
    while Tune copied them leaves them: an empty state.json, and a whole state.json whose
    training state is half there. Returns the step of the whole state, the one a restore takes."""
    states = _whole_states(sweep_dir)
    good = max(states, key=states.get)
    meta = json.loads((good / "state.json").read_text())
    empty, half = good.parent / "checkpoint_999998", good.parent / "checkpoint_999999"
    empty.mkdir()
    (empty / "state.json").write_text("")
    half.mkdir()
    (half / "state.json").write_text(json.dumps({**meta, "step": meta["step"] + 1000}))
    state = (good / "train_state.pt").read_bytes()
    (half / "train_state.pt").write_bytes(state[:len(state) // 2])
    return meta["step"]


def _assert_same_rows(got: dict, want: dict) -> None:
    for kind, keys in ROWS.items():
        a = got[kind].sort_values(keys).reset_index(drop=True)
        b = want[kind].sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=kind)
    cols = ["point_id", "status", "final_loss", "final_d_star", "selection_loss"]
    pd.testing.assert_frame_equal(got["done"][cols].sort_values("point_id").reset_index(drop=True),
                                  want["done"][cols].sort_values("point_id").reset_index(drop=True), check_exact=True)


def test_a_trial_whose_worker_is_killed_resumes_from_its_saved_state(reference, tmp_path):
    store = tmp_path / "store"
    driver = tms_background("sweep", f"store={store}", *GRID, "sweep.name=killed", log=tmp_path / "driver.log")
    try:
        wait_for(lambda: _saved_step(store / "killed") > 0, 240, "a saved training state past step 0")
        workers = [p.pid for p in processes() if p.sid == driver.pid and "ImplicitFunc" in p.cmdline]
        assert workers, "found no Ray worker running the trial"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()
    finally:
        end_session(driver.pid)
    assert "failed (attempt 1), retrying" in (tmp_path / "driver.log").read_text()
    got = read_store(store / "killed")
    assert (got["done"].resumed_step > 0).all(), "the retried trial continued past step 0"
    assert reference["done"].resumed_step.isna().all()
    _assert_same_rows(got, reference)


def test_a_sweep_whose_run_was_killed_resumes_its_trials_from_the_saved_state(reference, tmp_path):
    store = tmp_path / "store"
    args = ["sweep", f"store={store}", *GRID, "sweep.name=restarted"]
    driver = tms_background(*args, log=tmp_path / "driver.log")
    try:
        wait_for(lambda: _saved_step(store / "restarted") > 0, 240, "a saved training state past step 0")
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        end_session(driver.pid)  # the whole run: driver, Ray and the trial's worker, as a job's end does
    step = _plant_partial_checkpoints(store / "restarted")
    again = tms(*args)
    assert again.returncode == 0, again.stderr
    got = read_store(store / "restarted")
    assert (got["done"].resumed_step == step).all(), "the new run continued from the old run's whole saved state"
    _assert_same_rows(got, reference)
