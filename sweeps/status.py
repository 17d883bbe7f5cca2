"""`tms status SWEEP_DIR`: where a sweep stands, read from its store alone (no Ray, no lock taken).

    sweep intro: 30 points: 24 done, 0 diverged, 0 failed, 6 pending (80 % finished)
    driver: running, pid 4242 on node-1 since 2026-…, generation 3
    commits: 24 points in the last 2m10s, 11.1 points/min; ETA 0m32s

Counts come from the done markers (done, diverged) and ``points.parquet`` (failed); the
driver's state from its lock and ``.driver.json``; the rate from the markers' finish times.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from sweeps.errors import UsageError, one_line
from sweeps.lock import DriverLock, running
from sweeps.progress import duration
from sweeps.store import SweepStore

RATE_WINDOW_S = 600.0


def status(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print("usage: tms status SWEEP_DIR   (a sweep's folder <store>/<sweep.name>, a path or a URI)")
        return 0 if args else 2
    if len(args) > 1 or args[0].startswith("-"):
        raise UsageError(f"{' '.join(args)}: tms status takes one SWEEP_DIR")
    print(report(args[0]))
    return 0


def report(sweep_dir: str) -> str:
    """The status lines of one sweep."""
    store = SweepStore(sweep_dir)
    try:
        meta = store.read_json("sweep.json")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"SWEEP_DIR: {sweep_dir}/sweep.json is not readable JSON ({one_line(exc)})") from None
    except OSError as exc:
        raise UsageError(f"SWEEP_DIR: cannot read {sweep_dir}: {one_line(exc)}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"SWEEP_DIR: {sweep_dir} is not a sweep directory (no sweep.json)")
    done = store.read_done()
    points = store.read_table("points.parquet")
    total = points.num_rows if points is not None else int(meta.get("counts", {}).get("points", 0))
    status = done.column("status").to_pylist()
    finished = {"done": status.count("done"), "diverged": status.count("diverged")}
    failed = 0
    if points is not None:
        committed = set(done.column("point_id").to_pylist())
        failed = sum(1 for pid, s in zip(points.column("point_id").to_pylist(), points.column("status").to_pylist())
                     if s == "failed" and pid not in committed)
    pending = total - finished["done"] - finished["diverged"] - failed
    share = (finished["done"] + finished["diverged"]) / total if total else 0.0
    lines = [f"sweep {meta.get('name')}: {total} points: {finished['done']} done, {finished['diverged']} diverged, "
             f"{failed} failed, {pending} pending ({share:.0%} finished)"]

    info = DriverLock(store).driver_info() or {}
    who = f"pid {info.get('pid')} on {info.get('host')}" if info else "no driver record"
    if running(store):
        lines.append(f"driver: running, {who} since {info.get('since')}, generation {info.get('generation')}")
    elif info:
        lines.append(f"driver: not running; the last one ({who}, generation {info.get('generation')}) "
                     f"ended {info.get('ended') or 'without releasing its lock (killed)'}")
    else:
        lines.append("driver: not running")

    finished_at = done.column("finished_at").drop_null().to_numpy(zero_copy_only=False)
    if len(finished_at):
        now = datetime.now(timezone.utc)
        ages = (np.datetime64(now.replace(tzinfo=None), "ms") - finished_at.astype("datetime64[ms]")) \
            / np.timedelta64(1, "s")
        recent = ages[ages <= RATE_WINDOW_S]
        line = f"commits: the last one {duration(float(ages.min()))} ago"
        if len(recent) >= 2 and running(store):
            span = max(float(recent.max()), 1.0)
            rate = len(recent) / span
            line += f"; {len(recent)} points in the last {duration(span)}, {rate * 60:.1f} points/min"
            if pending:
                line += f"; ETA {duration(pending / rate)}"
        lines.append(line)
    return "\n".join(lines)
