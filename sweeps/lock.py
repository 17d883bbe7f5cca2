"""One driver per sweep: the lock, and the generation that fences every commit.

Local and shared-POSIX stores (a path or ``file://``): an OS lock (``flock``, through the
filelock library) on ``<sweep>/.lock``, held for the driver's whole run. The kernel releases
it when the process ends, however it ends, so it is never stale and never taken from a live
holder. The file itself stays (deleting a lock file others may have open would let two
processes lock two different files).

Object stores (``s3://``, ``gs://`` …) have no locks, and pyarrow's filesystems offer no
conditional create, so there the lock is a lease: ``.lock`` holds {owner, host, pid, since,
expires}. A driver claims a free or expired lease by writing it, waits ``settle`` seconds and
reads it back; it holds the lease only if its own owner token is still there (a later claim
overwrote it otherwise). A claim whose check-to-write gap exceeds settle/2 is retried, which
makes two surviving claims impossible when reads see the latest write (S3 and GCS are strongly
consistent). The holder renews the lease every ttl/3 and :meth:`DriverLock.verify` checks it
before each commit.

Every acquisition increments the sweep's generation, kept in ``.driver.json`` with the
holder's host, pid and start time. The driver stamps it on every staged attempt and done
marker and commits only attempts of its own generation, so a worker that outlives its driver
can never add or remove rows.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

from sweeps.errors import UsageError, one_line
from sweeps.store import SweepStore

LOCK = ".lock"
DRIVER = ".driver.json"
WAIT_S = 1.0       # how long a new driver waits for the lock before refusing
LEASE_TTL_S = 60.0
LEASE_SETTLE_S = 2.0


class LockLost(RuntimeError):
    """The lease was taken over (its holder stalled past its expiry): stop committing."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DriverLock:
    """The sweep's lock: an OS lock on local stores, a lease on object stores."""

    def __init__(self, store: SweepStore, wait: float = WAIT_S, lease: bool | None = None,
                 ttl: float = LEASE_TTL_S, settle: float = LEASE_SETTLE_S):
        """``wait``: seconds to wait for a held OS lock; ``lease``: use a lease (default: on object stores)."""
        self.store, self.wait, self.ttl, self.settle = store, wait, ttl, settle
        self.lease = (not store.local) if lease is None else lease
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now_iso(),
                   "owner": uuid.uuid4().hex}
        self.generation: int | None = None
        self._os = None
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self._lost: str | None = None

    # ------------------------------------------------------------------ acquiring
    def acquire(self) -> int:
        """Take the lock (or raise UsageError naming the holder); returns the new generation."""
        self.store.fs.create_dir(self.store.path, recursive=True)
        if self.lease:
            self._acquire_lease()
        else:
            self._acquire_os()
        previous = self.driver_info() or {}
        self.generation = int(previous.get("generation") or 0) + 1
        self.store.write_json(DRIVER, {**self._public(), "generation": self.generation})
        return self.generation

    def _acquire_os(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(os.path.join(self.store.path, LOCK))
        try:
            lock.acquire(timeout=self.wait)
        except Timeout:
            raise self._refusal(self.driver_info()) from None
        self._os = lock

    def _acquire_lease(self) -> None:
        for _ in range(5):
            checked = time.monotonic()
            current = self._read_lease()
            if current and current.get("expires", 0) > time.time() and current.get("owner") != self.me["owner"]:
                raise self._refusal(current)
            self._write_lease()
            if time.monotonic() - checked > self.settle / 2:
                continue  # too slow between check and write to be sure of the order: claim again
            time.sleep(self.settle)
            current = self._read_lease()
            if not current or current.get("owner") != self.me["owner"]:
                raise self._refusal(current)
            self._renewer = threading.Thread(target=self._renew, name="tms-lease", daemon=True)
            self._renewer.start()
            return
        raise UsageError(f"sweep.name: could not claim the lease of {self.store.uri} (the store answers too "
                         f"slowly); try again")

    def _refusal(self, info: dict | None) -> UsageError:
        who = (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}" if info
               else "another driver")
        return UsageError(f"sweep.name: sweep {self.store.uri} is already being run by {who}; "
                          "wait for it to finish or stop it")

    # ------------------------------------------------------------------ the lease
    def _read_lease(self) -> dict | None:
        try:
            return self.store.read_json(LOCK)
        except ValueError:
            return None

    def _write_lease(self) -> None:
        self.store.write_json(LOCK, {**self._public(), "owner": self.me["owner"],
                                     "expires": time.time() + self.ttl})

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self._read_lease()
                if not current or current.get("owner") != self.me["owner"]:
                    self._lost = f"the lease of {self.store.uri} was taken over by {current and current.get('host')}"
                    return
                self._write_lease()
            except OSError as exc:  # keep trying: the lease lasts ttl, renewals come every ttl/3
                print(f"warning: renewing the lease of {self.store.uri}: {one_line(exc)}", file=sys.stderr)

    def verify(self) -> None:
        """Raise LockLost unless this driver still holds the lock (a no-op for OS locks)."""
        if not self.lease:
            return
        current = self._read_lease()
        if self._lost or not current or current.get("owner") != self.me["owner"]:
            raise LockLost(self._lost or f"the lease of {self.store.uri} is no longer held by this driver")

    # ------------------------------------------------------------------ releasing, reading
    def release(self) -> None:
        """Give the lock up (idempotent); ``.driver.json`` records when."""
        if self.generation is not None:
            try:
                self.store.write_json(DRIVER, {**self._public(), "generation": self.generation, "ended": now_iso()})
            except OSError:
                pass
        if self._os is not None:
            self._os.release()
            self._os = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join(timeout=5)
            self._renewer = None
            try:
                current = self._read_lease()
                if current and current.get("owner") == self.me["owner"]:
                    self.store.fs.delete_file(self.store._p(LOCK))
            except OSError:
                pass
        self.generation = None

    def driver_info(self) -> dict | None:
        """The last driver's record (host, pid, since, generation, ended), if readable."""
        try:
            info = self.store.read_json(DRIVER)
        except (ValueError, OSError):
            return None
        return info if isinstance(info, dict) else None

    def _public(self) -> dict:
        return {k: self.me[k] for k in ("host", "pid", "since")}

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *_):
        self.release()


def running(store: SweepStore) -> bool:
    """Whether a driver holds the sweep's lock right now (reads only; for `tms status`)."""
    if not store.local:  # a lease: held while unexpired
        lease = None
        try:
            lease = store.read_json(LOCK)
        except ValueError:
            pass
        return bool(lease) and lease.get("expires", 0) > time.time()
    path = os.path.join(store.path, LOCK)
    if not os.path.exists(path):
        return False
    import fcntl

    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
