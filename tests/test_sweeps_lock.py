"""One driver per sweep, with real concurrency: processes released at the same instant race for
the lock round after round, and exactly one wins each round — the OS lock of local stores and
the lease of object stores (run here on a local folder through the same code)."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from sweeps.errors import UsageError
from sweeps.lock import DriverLock, LockLost, running
from sweeps.store import SweepStore

pytestmark = pytest.mark.serial  # drivers racing in real processes: one at a time, in one test worker

RACERS = 4


def _race(path: str, rounds: int, barrier, results, lease: bool) -> None:
    store = SweepStore(path)
    for r in range(rounds):
        lock = DriverLock(store, wait=0.0, lease=lease, ttl=30.0, settle=0.2)
        barrier.wait()
        try:
            generation = lock.acquire()
        except UsageError as exc:
            results.put((r, os.getpid(), None, str(exc)))
        else:
            results.put((r, os.getpid(), generation, ""))
        barrier.wait()  # everyone has tried before the winner lets go
        lock.release()
        barrier.wait()


def _run_race(path: str, rounds: int, lease: bool) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, rounds, barrier, results, lease)) for _ in range(RACERS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(RACERS * rounds)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    by_round: dict[int, list] = {}
    for r, pid, generation, message in got:
        by_round.setdefault(r, []).append((pid, generation, message))
    return by_round


@pytest.mark.parametrize("lease", [False, True], ids=["os-lock", "lease"])
def test_racing_drivers_exactly_one_wins_every_round(tmp_path, lease):
    rounds = 40 if not lease else 8
    by_round = _run_race(str(tmp_path / "sweep"), rounds, lease)
    generations = []
    for r in range(rounds):
        winners = [g for _, g, _ in by_round[r] if g is not None]
        assert len(winners) == 1, f"round {r}: {len(winners)} drivers hold the lock"
        generations += winners
        for _, g, message in by_round[r]:
            if g is None:
                assert "is already being run by" in message, message
    assert generations == list(range(1, rounds + 1)), "each acquisition is the next generation"


HOLD = ("import sys, time\n"
        "from sweeps.lock import DriverLock\n"
        "from sweeps.store import SweepStore\n"
        "lock = DriverLock(SweepStore(sys.argv[1]), lease=sys.argv[2] == 'lease', ttl=2.0, settle=0.2)\n"
        "print(lock.acquire(), flush=True)\n"
        "time.sleep(600)\n")


def _holder(path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip().isdigit()
    return proc


def test_a_live_holder_is_named_and_a_killed_one_frees_the_lock_at_once(tmp_path):
    store = SweepStore(str(tmp_path / "sweep"))
    holder = _holder(store.path, "os")
    try:
        assert running(store)
        with pytest.raises(UsageError, match=f"already being run by pid {holder.pid} on "):
            DriverLock(store, wait=0.2).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not running(store), "the kernel released the killed holder's lock"
    lock = DriverLock(store, wait=0.2)
    assert lock.acquire() == 2
    lock.release()
    assert (tmp_path / "sweep" / ".lock").exists(), "the lock file stays (deleting it would split the lock)"


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(tmp_path):
    store = SweepStore(str(tmp_path / "sweep"))
    holder = _holder(store.path, "lease")  # ttl 2 s, renewed every 0.7 s while it lives
    try:
        with pytest.raises(UsageError, match=f"already being run by pid {holder.pid}"):
            DriverLock(store, lease=True, ttl=2.0, settle=0.2).acquire()
        holder.send_signal(signal.SIGSTOP)  # a stalled holder: its lease runs out
        time.sleep(2.5)
        taker = DriverLock(store, lease=True, ttl=30.0, settle=0.2)
        assert taker.acquire() == 2
        stale = DriverLock(store, lease=True, ttl=2.0, settle=0.2)
        stale.me = {**stale.me, "owner": "the stalled holder"}
        with pytest.raises(LockLost):
            stale.verify()
        taker.verify()
        taker.release()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
