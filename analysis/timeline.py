"""Timelines of one point: loss plateaus and drops, energy-level transitions, and their alignment.

Loss (on log10 step × log10 loss, step ≥ 1): an interval between checkpoints is flat when its
slope is at most ``plateau_slope``; runs of at least ``min_plateau_points`` flat checkpoints are
plateaus. The fall from one plateau's end to the next one's start is a drop when it lowers the
loss by ``min_drop`` or more at a mean slope of at least ``drop_slope``; otherwise the two
plateaus merge. A drop's step is the end of its steepest interval; its core is the run of
intervals around that one where the loss falls at least half as steeply.

Geometry over time: the store keeps W only at the end, so transitions are read from the
per-feature D_i series in ``features/``. D_i (0 below ``learned_norm``) settles at an
energy level after ``min_dwell`` checkpoints within ``level_tol`` of it over which it varies
by at most ``level_tol`` (a feature passing through a level on its way elsewhere has not
settled), and leaves it only for a level it is clearly nearer to (hysteresis). A transition
is a move between two settled levels, stepped at the first checkpoint where D_i is clearly
nearer the new level than the old (a feature's first settling, after step 0, is a transition from
None). A geometry change is a change of the multiset of settled levels between two
checkpoints at which every feature sits at its settled level.

Alignment: a transition or geometry change matches a drop when its checkpoint lies in the
drop's core widened by ``match_tolerance`` checkpoints on each side (the checkpoint that ends
an interval of the core counts); unmatched drops and transitions are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import TimelineConfig
from .energy import LEVELS, LEVEL_VALUES, assign_levels, describe_levels, masked_dimensionality

EVENT_KINDS = ("plateau", "drop", "transition", "geometry")


@dataclass(frozen=True)
class Plateau:
    """Checkpoints ``start`` … ``end`` (indices into the loss steps) where the loss is flat."""

    start: int
    end: int


@dataclass(frozen=True)
class Drop:
    """A fall of the loss between two plateaus (indices into the loss steps).

    ``before``: the end of the plateau it leaves; ``after``: the start of the plateau it
    reaches; ``at``: the end of its steepest interval; ``start`` … ``end``: its core, the
    checkpoints around ``at`` where the loss falls at least half as steeply as there.
    """

    before: int
    after: int
    at: int
    start: int
    end: int


@dataclass(frozen=True)
class Transition:
    """Feature ``feature`` moved from level ``src`` to ``dst`` (indices into LEVELS; ``src``
    None for a first settling) at checkpoint ``at`` (index into the feature steps)."""

    feature: int
    src: Optional[int]
    dst: int
    at: int


@dataclass(frozen=True)
class GeometryChange:
    """The settled-level multiset changed from ``src`` to ``dst`` (descriptions) at ``at``."""

    src: str
    dst: str
    at: int


def loss_events(steps: np.ndarray, loss: np.ndarray, cfg: TimelineConfig = TimelineConfig()
                ) -> tuple[list[Plateau], list[Drop]]:
    """Plateaus and drops of a loss curve ``loss`` [T] at checkpoints ``steps`` [T] (ascending)."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    idx = np.flatnonzero((steps >= 1) & np.isfinite(loss) & (loss > 0))
    if len(idx) < cfg.min_plateau_points:
        return [], []
    x = np.log10(steps[idx])
    y = np.log10(loss[idx])
    slope = np.diff(y) / np.maximum(np.diff(x), 1e-12)
    flat = np.abs(slope) <= cfg.plateau_slope
    runs = []
    k = 0
    while k < len(flat):
        if not flat[k]:
            k += 1
            continue
        j = k
        while j + 1 < len(flat) and flat[j + 1]:
            j += 1
        if j - k + 2 >= cfg.min_plateau_points:  # intervals k..j cover checkpoints k..j+1
            runs.append([k, j + 1])
        k = j + 1
    fall = -np.log10(1 - cfg.min_drop)

    def is_drop(a: int, b: int) -> bool:
        return y[a] - y[b] >= fall and (y[a] - y[b]) / max(x[b] - x[a], 1e-12) >= cfg.drop_slope

    merged: list[list[int]] = []
    for run in runs:
        if merged and not is_drop(merged[-1][1], run[0]):
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    drops = []
    for (_, a1), (b0, _) in zip(merged, merged[1:]):
        k = a1 + int(np.argmin(slope[a1:b0]))          # steepest interval: checkpoints k, k+1
        half = slope[k] / 2
        lo, hi = k, k
        while lo > a1 and slope[lo - 1] <= half:
            lo -= 1
        while hi + 1 < b0 and slope[hi + 1] <= half:
            hi += 1
        drops.append(Drop(int(idx[a1]), int(idx[b0]), int(idx[k + 1]), int(idx[lo]), int(idx[hi + 1])))
    return [Plateau(int(idx[a]), int(idx[b])) for a, b in merged], drops


def level_transitions(D: np.ndarray, tol: float, min_dwell: int) -> tuple[list[Transition], np.ndarray]:
    """Energy-level transitions of every feature of ``D`` [T, n] (masked D_i, checkpoints in order).

    A feature settles at a level when D_i is within ``tol`` of it (the nearest such level) for
    ``min_dwell`` consecutive checkpoints over which D_i varies by at most ``tol``. It leaves
    only for a level it is clearly nearer to (by half the smaller of ``tol`` and the gap between
    the two levels) and once settled there, so D_i halfway between two levels does not flicker. Returns the
    transitions (ordered by checkpoint, then feature) and the settled level of each checkpoint
    and feature [T, n] (−1 where the feature is not at its settled level).
    """
    T, n = D.shape
    near = assign_levels(D, tol)                                            # [T, n]
    settled = np.full((T, n), -1, dtype=np.int64)
    if T < min_dwell:
        return [], settled
    win = np.lib.stride_tricks.sliding_window_view(np.nan_to_num(D, nan=np.inf), min_dwell, axis=0)
    still = (win.max(axis=-1) - win.min(axis=-1)) <= tol                   # [T - w + 1, n]
    state = np.full(n, -1, dtype=np.int64)
    cand = np.full(n, -1, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    last_in = np.full(n, -1, dtype=np.int64)     # last checkpoint within tol of the settled level
    out = []
    for t in range(T):
        at_level = near[t]
        here = LEVEL_VALUES[np.maximum(state, 0)]
        there = LEVEL_VALUES[np.maximum(at_level, 0)]
        margin = np.minimum(tol, np.abs(there - here)) / 2   # hysteresis
        moving = (at_level >= 0) & (at_level != state) & (
            (state < 0) | (np.abs(D[t] - there) + margin < np.abs(D[t] - here)))
        in_state = (state >= 0) & ~moving & (np.abs(D[t] - here) <= tol)
        count = np.where(moving, np.where(at_level == cand, count + 1, 1), 0)
        cand = np.where(moving, at_level, -1)
        start = t - min_dwell + 1
        if start >= 0:
            for f in np.flatnonzero((count >= min_dwell) & still[start]):
                src, dst = int(state[f]), int(cand[f])
                if src < 0:
                    if start > 0:
                        out.append(Transition(int(f), None, dst, start))
                else:
                    seg = D[last_in[f] + 1:t + 1, f]
                    gap = min(tol, abs(LEVEL_VALUES[dst] - LEVEL_VALUES[src])) / 2
                    nearer = np.abs(seg - LEVEL_VALUES[dst]) + gap < np.abs(seg - LEVEL_VALUES[src])
                    out.append(Transition(int(f), src, dst, int(last_in[f] + 1 + np.argmax(nearer))))
                state[f] = dst
                settled[start:t + 1, f] = dst
                count[f], cand[f] = 0, -1
                in_state[f] = True
        settled[t, in_state] = state[in_state]
        last_in = np.where(in_state, t, last_in)
    out.sort(key=lambda tr: (tr.at, tr.feature))
    return out, settled


def geometry_changes(settled: np.ndarray, transitions: list[Transition]) -> list[GeometryChange]:
    """Changes of the settled-level multiset between checkpoints where all features settled.

    ``settled`` [T, n] from :func:`level_transitions`. A change is stepped at the last
    transition between the two checkpoints (or at the later checkpoint when there is none).
    """
    full = np.flatnonzero((settled >= 0).all(axis=1))
    if len(full) < 2:
        return []
    counts = np.stack([(settled[full] == i).sum(axis=1) for i in range(len(LEVELS))], axis=1)
    out = []
    at_steps = np.array([t.at for t in transitions], dtype=np.int64)
    for j in np.flatnonzero((counts[1:] != counts[:-1]).any(axis=1)) + 1:
        a, b = int(full[j - 1]), int(full[j])
        inside = at_steps[(at_steps > a) & (at_steps <= b)]
        out.append(GeometryChange(describe_levels(settled[a]), describe_levels(settled[b]),
                                  int(inside.max()) if inside.size else b))
    return out


def match(drops: list[Drop], at: np.ndarray, tolerance: int) -> tuple[list[list[int]], np.ndarray]:
    """Align drops with events at checkpoint indices ``at`` [E] (indices into the loss steps).

    Returns, per drop, the indices of the events in its widened span, and per event the index
    of the drop whose span holds it (−1 when none; the nearest drop step on ties).
    """
    at = np.asarray(at, dtype=np.int64)
    per_drop: list[list[int]] = []
    owner = np.full(len(at), -1, dtype=np.int64)
    gap = np.full(len(at), np.iinfo(np.int64).max)
    for d, drop in enumerate(drops):
        inside = np.flatnonzero((at >= drop.start + 1 - tolerance) & (at <= drop.end + tolerance))
        per_drop.append(inside.tolist())
        dist = np.abs(at[inside] - drop.at)
        better = dist < gap[inside]
        owner[inside[better]] = d
        gap[inside[better]] = dist[better]
    return per_drop, owner


@dataclass(frozen=True)
class Timeline:
    """Everything detected on one point; indices refer to ``steps`` (the loss checkpoints)."""

    steps: np.ndarray
    plateaus: list[Plateau]
    drops: list[Drop]
    transitions: list[Transition]
    """Transitions with ``at`` mapped onto the loss checkpoints."""
    changes: list[GeometryChange]
    """Geometry changes with ``at`` mapped onto the loss checkpoints."""
    drop_matches: list[list[int]]
    """Per drop: indices into ``transitions`` ∪ ``changes`` (transitions first) it matches."""
    event_owner: np.ndarray
    """Per transition, then per geometry change: the drop it matches, −1 when unmatched."""


def detect(steps: np.ndarray, loss: np.ndarray, feature_steps: np.ndarray, dimensionality: np.ndarray,
           norm: np.ndarray, learned_norm: float, level_tol: float,
           cfg: TimelineConfig = TimelineConfig()) -> Timeline:
    """Detect and align all events of one point.

    ``steps``, ``loss`` [T]: eval loss per checkpoint; ``feature_steps`` [T'] with
    ``dimensionality`` and ``norm`` [T', n]: the per-feature series.
    """
    plateaus, drops = loss_events(steps, loss, cfg)
    D = masked_dimensionality(dimensionality, norm, learned_norm)
    transitions, settled = level_transitions(D, level_tol, cfg.min_dwell)
    changes = geometry_changes(settled, transitions)
    to_loss = np.clip(np.searchsorted(steps, feature_steps), 0, max(len(steps) - 1, 0))
    transitions = [Transition(t.feature, t.src, t.dst, int(to_loss[t.at])) for t in transitions]
    changes = [GeometryChange(c.src, c.dst, int(to_loss[c.at])) for c in changes]
    at = np.array([t.at for t in transitions] + [c.at for c in changes], dtype=np.int64)
    per_drop, owner = match(drops, at, cfg.match_tolerance)
    return Timeline(np.asarray(steps), plateaus, drops, transitions, changes, per_drop, owner)


EVENT_COLUMNS = ("point_id", "kind", "step", "start_step", "end_step", "feature", "from", "to",
                 "loss_from", "loss_to", "matched", "matched_step")


def event_rows(point_id: str, tl: Timeline, loss: np.ndarray) -> dict[str, list]:
    """The events of one point as columns (see :data:`EVENT_COLUMNS`) for ``events.parquet``.

    ``matched_step``: for a drop, the step of its nearest matched transition or geometry
    change; for those, the step of the drop they match; null when unmatched (and for plateaus).
    """
    rows: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    steps = tl.steps

    def add(kind, step, start=None, end=None, feature=None, src=None, dst=None,
            lf=None, lt=None, matched=None, matched_step=None):
        for key, val in zip(EVENT_COLUMNS, (point_id, kind, step, start, end, feature, src, dst,
                                            lf, lt, matched, matched_step)):
            rows[key].append(val)

    for p in tl.plateaus:
        add("plateau", int(steps[p.start]), int(steps[p.start]), int(steps[p.end]),
            lf=float(loss[p.start]), lt=float(loss[p.end]))
    at = [t.at for t in tl.transitions] + [c.at for c in tl.changes]
    for d, (drop, hits) in enumerate(zip(tl.drops, tl.drop_matches)):
        nearest = min(hits, key=lambda h: (abs(at[h] - drop.at), at[h])) if hits else None
        add("drop", int(steps[drop.at]), int(steps[drop.start]), int(steps[drop.end]),
            lf=float(loss[drop.before]), lt=float(loss[drop.after]), matched=bool(hits),
            matched_step=None if nearest is None else int(steps[at[nearest]]))
    n_t = len(tl.transitions)
    for e, owner in enumerate(tl.event_owner.tolist()):
        ms = int(steps[tl.drops[owner].at]) if owner >= 0 else None
        if e < n_t:
            t = tl.transitions[e]
            add("transition", int(steps[t.at]), feature=t.feature,
                src=None if t.src is None else LEVELS[t.src].text, dst=LEVELS[t.dst].text,
                matched=owner >= 0, matched_step=ms)
        else:
            c = tl.changes[e - n_t]
            add("geometry", int(steps[c.at]), src=c.src, dst=c.dst, matched=owner >= 0, matched_step=ms)
    return rows
