"""The driver's progress line: points done of all, model-steps per second, elapsed, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts of a running sweep and its live progress line on stderr."""

    def __init__(self, name: str, total_points: int, already_done: int, trials: dict[str, tuple[int, int]]):
        """``trials``: trial_key -> (points, steps) of every trial of this run."""
        self.name, self.total_points, self.points_done = name, total_points, already_done
        self.trials = trials
        self.model_steps_todo = sum(n * steps for n, steps in trials.values())
        self.finished_steps = 0
        self.running: dict[str, int] = {}
        self.failed: dict[str, str] = {}   # point_id -> trial_key, trials that failed all retries
        self.start = time.monotonic()
        self.last_print = 0.0
        self.tty = sys.stderr.isatty()

    def reported(self, key: str, model_steps: int) -> None:
        self.running[key] = model_steps
        self.show()

    def ended(self, key: str, point_ids: list[str] | None = None) -> None:
        """A trial ended: committed (``point_ids`` None) or failed for good (its points)."""
        self.running.pop(key, None)
        n, steps = self.trials[key]
        self.finished_steps += n * steps
        if point_ids is None:
            self.points_done += n
        else:
            self.failed.update({p: key for p in point_ids})
        self.show()

    def retrying(self, key: str) -> None:
        self.running.pop(key, None)

    def show(self, end: bool = False) -> None:
        now = time.monotonic()
        if not (end or now - self.last_print >= (1.0 if self.tty else 10.0)):
            return
        self.last_print = now
        elapsed = max(now - self.start, 1e-9)
        steps_now = self.finished_steps + sum(self.running.values())
        rate = steps_now / elapsed
        left = self.model_steps_todo - steps_now
        eta = duration(left / rate) if rate > 0 and left > 0 else "-"
        line = (f"[{self.name}] points {self.points_done}/{self.total_points}"
                f"{f' ({len(self.failed)} failed)' if self.failed else ''} | {rate:,.0f} model-steps/s"
                f" | elapsed {duration(elapsed)} | ETA {eta}")
        if self.tty:
            print("\r" + line.ljust(100), end="\n" if end else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
