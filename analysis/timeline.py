"""Timelines of one point: loss plateaus and drops, feature level jumps, geometry changes, and
which drops coincide with which events.

Loss (on log10 step × log10 loss, step ≥ 1): an interval between checkpoints is flat when its
slope is at most ``plateau_slope``; runs of at least ``min_plateau_points`` flat checkpoints are
plateaus. The fall from one plateau to the next is a drop when the next one's median loss is
``min_drop`` or more below this one's and the loss falls from this one's end to the next one's
start by at least half that, at a mean slope of at least ``drop_slope`` (a slow power law
broken by a noisy interval falls by nothing there); otherwise the two plateaus merge. A drop's step is the end of its steepest interval; its core is the run of
intervals around that one where the loss falls at least half as steeply.

Energy levels over time, per feature (D_i, 0 below ``learned_norm``): a feature settles at a
level after ``min_dwell`` consecutive checkpoints within that level's tolerance over which D_i
varies by at most ``still`` (passing through a level is no stay), and leaves it only for a level
it is clearly nearer to (hysteresis). Before the loss has fallen by ``min_drop`` from its first
value the model is still its random initialisation: a D_i on a nonzero level there is chance and
is not taken (level 0, a feature too small to count as learned, is, and so are moves from it). A feature's first settling at
a nonzero level, from no level or from 0 after the start, is **learned**; a move between two
settled levels is a **transition** (0 → a level included when the feature sat at 0 before).

Geometry over time: with weights at every checkpoint, each checkpoint gets the geometry label
of its W (analysis.geometry); a label held for ``min_dwell`` checkpoints is stable, and a
**geometry** event is a change between two consecutive stable labels, at the first checkpoint
of the new one (labels before the loss moved are the initialisation's and are skipped, unless
no feature is learned yet). Without them, the label is the multiset of settled levels at
checkpoints where every feature is settled, and its change is placed at the last level jump
between the two labels.

Alignment: a transition or geometry event meets a drop when its checkpoint (for a geometry
event, the first checkpoint of the new label) lies in the drop's core widened by
``match_tolerance`` checkpoints on each side; learned events never do (the first learning is
no change of geometry). The geometry changes at a drop when an event meets it or when the D_i
of a feature that had settled before moves by at least ``min_jump`` across that widened core
(D_i that drift between levels, as in the correlated-feature dynamics, change geometry without
settling). Drops at
which it does not change are reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .config import TimelineConfig
from .energy import LEVEL_VALUES, LEVELS, ZERO, assign_levels, describe_levels
from .geometry import NOT_LEARNED

EVENT_KINDS = ("plateau", "drop", "learned", "transition", "geometry")


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
    """Feature ``feature`` moved from level ``src`` to ``dst`` (indices into LEVELS) at checkpoint
    ``at``; ``src`` None marks its first settling (a learned event)."""

    feature: int
    src: Optional[int]
    dst: int
    at: int

    @property
    def learned(self) -> bool:
        """The first settling of the feature at a level: no jump between levels."""
        return self.src is None


@dataclass(frozen=True)
class GeometryChange:
    """The geometry label changed from ``src`` to ``dst``: the old label last held at checkpoint
    ``start`` − 1, the new one first held at ``at``."""

    src: str
    dst: str
    start: int
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

    def is_drop(prev: list[int], run: list[int]) -> bool:
        a, b = prev[1], run[0]
        level = np.median(y[prev[0]:prev[1] + 1]) - np.median(y[run[0]:run[1] + 1])
        return (level >= fall and y[a] - y[b] >= fall / 2
                and (y[a] - y[b]) / max(x[b] - x[a], 1e-12) >= cfg.drop_slope)

    merged: list[list[int]] = []
    for run in runs:
        if merged and not is_drop(merged[-1], run):
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


def trained_from(loss: np.ndarray, min_drop: float) -> int:
    """First checkpoint at which ``loss`` [T] is ``min_drop`` below its first value (T if never)."""
    loss = np.asarray(loss, dtype=np.float64)
    if len(loss) == 0:
        return 0
    below = np.flatnonzero(loss <= (1 - min_drop) * loss[0])
    return int(below[0]) if below.size else len(loss)


def level_transitions(D: np.ndarray, tol: np.ndarray, min_dwell: int, start: int = 0, still: float = 0.015
                      ) -> tuple[list[Transition], np.ndarray]:
    """Learned events and transitions of every feature of ``D`` [T, n] (masked D_i, checkpoints in order).

    ``tol`` [len(LEVELS)]: each level's tolerance (:func:`analysis.energy.tolerances`);
    ``start``: the first checkpoint at which a feature not yet settled may settle at a nonzero
    level (see the module doc); ``still``: the most D_i may vary over the ``min_dwell``
    checkpoints of a settling (capped by the level's tolerance).
    Returns the events (ordered by checkpoint, then feature) and the settled level of each
    checkpoint and feature [T, n] (−1 where the feature is not at its settled level).
    """
    T, n = D.shape
    tol = np.asarray(tol, dtype=np.float64)
    near = assign_levels(D, tol)                                            # [T, n]
    settled = np.full((T, n), -1, dtype=np.int64)
    if T < min_dwell:
        return [], settled
    win = np.lib.stride_tricks.sliding_window_view(np.nan_to_num(D, nan=np.inf), min_dwell, axis=0)
    spread = win.max(axis=-1) - win.min(axis=-1)                           # [T - w + 1, n]
    state = np.full(n, -1, dtype=np.int64)
    cand = np.full(n, -1, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    last_in = np.full(n, -1, dtype=np.int64)     # last checkpoint within tol of the settled level
    out = []
    for t in range(T):
        at_level = near[t]
        if t < start:       # the initialisation: only "not learned" is taken, or moves from it
            at_level = np.where((state < 0) & (at_level != ZERO), -1, at_level)
        here = LEVEL_VALUES[np.maximum(state, 0)]
        there = LEVEL_VALUES[np.maximum(at_level, 0)]
        margin = np.minimum(tol[np.maximum(at_level, 0)], np.abs(there - here)) / 2   # hysteresis
        moving = (at_level >= 0) & (at_level != state) & (
            (state < 0) | (np.abs(D[t] - there) + margin < np.abs(D[t] - here)))
        in_state = (state >= 0) & ~moving & (np.abs(D[t] - here) <= tol[np.maximum(state, 0)])
        count = np.where(moving, np.where(at_level == cand, count + 1, 1), 0)
        cand = np.where(moving, at_level, -1)
        first = t - min_dwell + 1
        if first >= 0:
            ready = (count >= min_dwell) & (spread[first] <= np.minimum(tol[np.maximum(cand, 0)], still))
            for f in np.flatnonzero(ready):
                src, dst = int(state[f]), int(cand[f])
                if src < 0:
                    if dst != ZERO and first > 0:
                        out.append(Transition(int(f), None, dst, first))
                else:
                    seg = D[last_in[f] + 1:t + 1, f]
                    gap = min(tol[dst], abs(LEVEL_VALUES[dst] - LEVEL_VALUES[src])) / 2
                    nearer = np.abs(seg - LEVEL_VALUES[dst]) + gap < np.abs(seg - LEVEL_VALUES[src])
                    out.append(Transition(int(f), src, dst, int(last_in[f] + 1 + np.argmax(nearer))))
                state[f] = dst
                settled[first:t + 1, f] = dst
                count[f], cand[f] = 0, -1
                in_state[f] = True
        settled[t, in_state] = state[in_state]
        last_in = np.where(in_state, t, last_in)
    out.sort(key=lambda tr: (tr.at, tr.feature))
    return out, settled


def label_changes(labels: Sequence[Optional[str]], min_dwell: int) -> list[GeometryChange]:
    """Changes between consecutive stable labels (held ``min_dwell`` checkpoints; None: no label)."""
    runs: list[tuple[str, int, int]] = []           # (label, first, last) of each stable run
    t = 0
    while t < len(labels):
        u = t
        while u + 1 < len(labels) and labels[u + 1] == labels[t]:
            u += 1
        if labels[t] is not None and u - t + 1 >= min_dwell:
            if runs and runs[-1][0] == labels[t]:
                runs[-1] = (labels[t], runs[-1][1], u)
            else:
                runs.append((labels[t], t, u))
        t = u + 1
    return [GeometryChange(a[0], b[0], a[2] + 1, b[1]) for a, b in zip(runs, runs[1:])]


def level_labels(settled: np.ndarray) -> list[Optional[str]]:
    """Per checkpoint, the geometry named by the settled levels [T, n] (None unless all settled)."""
    return [describe_levels(row) if (row >= 0).all() else None for row in settled]


def match(drops: list[Drop], spans: Sequence[tuple[int, int]], tolerance: int
          ) -> tuple[list[list[int]], np.ndarray]:
    """Align drops with events spanning checkpoints ``spans`` [(first, last), …] (loss-step indices).

    Returns, per drop, the indices of the events that meet its widened core, and per event the
    index of the drop it meets (−1 when none; the drop whose step is nearest on ties).
    """
    per_drop: list[list[int]] = []
    owner = np.full(len(spans), -1, dtype=np.int64)
    gap = np.full(len(spans), np.iinfo(np.int64).max)
    lo = np.array([s[0] for s in spans], dtype=np.int64)
    hi = np.array([s[1] for s in spans], dtype=np.int64)
    for d, drop in enumerate(drops):
        inside = np.flatnonzero((hi >= drop.start + 1 - tolerance) & (lo <= drop.end + tolerance))
        per_drop.append(inside.tolist())
        dist = np.abs(hi[inside] - drop.at)
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
    """Learned events and transitions, ``at`` mapped onto the loss checkpoints."""
    changes: list[GeometryChange]
    """Geometry events, mapped onto the loss checkpoints."""
    from_weights: bool
    """The geometry events come from per-checkpoint weights (else from the settled levels)."""
    drop_matches: list[list[int]]
    """Per drop: indices into ``transitions`` ∪ ``changes`` (transitions first) that meet it."""
    event_owner: np.ndarray
    """Per transition, then per geometry change: the drop it meets, −1 when none (learned: −1)."""
    drop_jumps: list[float]
    """Per drop: the largest change across its widened core of the D_i of a feature that had
    settled at a level before (the first learning from a random start is no change)."""
    min_jump: float
    """A drop whose ``drop_jumps`` reaches this changed the geometry even without an event."""

    def drop_changes_geometry(self, d: int) -> bool:
        """A level jump or geometry event meets drop ``d``, or a D_i moves by ``min_jump`` across it."""
        return bool(self.drop_matches[d]) or self.drop_jumps[d] >= self.min_jump

    @property
    def unmatched_drops(self) -> list[int]:
        """Indices of the drops at which the geometry does not change (see drop_changes_geometry)."""
        return [d for d in range(len(self.drops)) if not self.drop_changes_geometry(d)]


def _nothing_learned(label: str) -> bool:
    """The label of a model with no learned feature ("not learned ×n"): true even at initialisation."""
    return label.startswith(NOT_LEARNED) and "+" not in label


def _to(steps: np.ndarray, event_steps: np.ndarray) -> np.ndarray:
    """Indices into ``steps`` of the first checkpoint at or after each of ``event_steps``."""
    return np.clip(np.searchsorted(steps, event_steps), 0, max(len(steps) - 1, 0))


def detect(steps: np.ndarray, loss: np.ndarray, feature_steps: np.ndarray, dimensionality: np.ndarray,
           norm: np.ndarray, learned_norm: float, level_tol: np.ndarray,
           cfg: TimelineConfig = TimelineConfig(), label_steps: Optional[np.ndarray] = None,
           labels: Optional[Sequence[str]] = None) -> Timeline:
    """Detect and align all events of one point.

    ``steps``, ``loss`` [T]: eval loss per checkpoint; ``feature_steps`` [T'] with
    ``dimensionality`` and ``norm`` [T', n]: the per-feature series; ``level_tol``
    [len(LEVELS)]: per-level tolerances; ``label_steps`` [T''] with ``labels``: the geometry
    label of W at each checkpoint, when the store keeps W over time.
    """
    steps = np.asarray(steps)
    fs = np.asarray(feature_steps)
    plateaus, drops = loss_events(steps, loss, cfg)
    D = np.where(np.asarray(norm) < learned_norm, 0.0, np.asarray(dimensionality, dtype=np.float64))
    loss_at = np.asarray(loss, dtype=np.float64)[_to(steps, np.asarray(feature_steps))]
    moved = trained_from(loss_at, cfg.min_drop) if len(steps) else 0
    transitions, settled = level_transitions(D, level_tol, cfg.min_dwell, start=moved, still=cfg.still)
    if labels is not None and label_steps is not None and len(labels):
        label_steps = np.asarray(label_steps)
        first = int(np.searchsorted(label_steps, feature_steps[min(moved, len(feature_steps) - 1)]))
        shown = [lab if t >= first or _nothing_learned(lab) else None for t, lab in enumerate(labels)]
        changes = [GeometryChange(c.src, c.dst, int(label_steps[c.start]), int(label_steps[c.at]))
                   for c in label_changes(shown, cfg.min_dwell)]
        from_weights = True
    else:
        fs = np.asarray(feature_steps)
        jumps = np.array([t.at for t in transitions], dtype=np.int64)
        changes = []
        for c in label_changes(level_labels(settled), cfg.min_dwell):
            # the settled levels show a change only once every feature has settled again; it
            # happened at the last level jump since the old label
            inside = jumps[(jumps >= c.start) & (jumps <= c.at)]
            changes.append(GeometryChange(c.src, c.dst, int(fs[c.start]), int(fs[inside.max() if inside.size else c.at])))
        from_weights = False
    transitions = [Transition(t.feature, t.src, t.dst, int(_to(steps, fs[t.at]))) for t in transitions]
    changes = [GeometryChange(c.src, c.dst, int(_to(steps, c.start)), int(_to(steps, c.at))) for c in changes]
    spans = [(t.at, t.at) for t in transitions] + [(c.at, c.at) for c in changes]
    matchable = [i for i, t in enumerate(transitions) if not t.learned] + \
        list(range(len(transitions), len(spans)))
    hits, own = match(drops, [spans[i] for i in matchable], cfg.match_tolerance)
    per_drop = [[matchable[i] for i in h] for h in hits]
    owner = np.full(len(spans), -1, dtype=np.int64)
    owner[matchable] = own
    jumps = []
    known = np.maximum.accumulate(settled >= 0, axis=0)      # [T', n]: the feature settled before
    for drop in drops:
        a, b = (int(_to(fs, steps[max(drop.start - cfg.match_tolerance, 0)])),
                int(_to(fs, steps[min(drop.end + cfg.match_tolerance, len(steps) - 1)])))
        move = np.where(known[a], np.nan_to_num(np.abs(D[b] - D[a])), 0.0)
        jumps.append(float(move.max()) if move.size else 0.0)
    return Timeline(steps, plateaus, drops, transitions, changes, from_weights, per_drop, owner, jumps,
                    cfg.min_jump)


EVENT_COLUMNS = ("point_id", "kind", "step", "start_step", "end_step", "feature", "from", "to",
                 "loss_from", "loss_to", "jump", "matched", "matched_step")


def event_rows(point_id: str, tl: Timeline, loss: np.ndarray) -> dict[str, list]:
    """The events of one point as columns (see :data:`EVENT_COLUMNS`) for ``events.parquet``.

    ``matched``: for a drop, whether the geometry changes at it (a transition or geometry event
    meets it, or ``jump``, the largest change of a feature's D_i across it, reaches
    ``min_jump``); for those events, whether they meet a drop (learned events: always false).
    ``matched_step``: for a drop, the step of its nearest such event; for an event, the step of
    the drop it meets; else null. A geometry event's ``start_step`` is the first checkpoint
    after its old label.
    """
    rows: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    steps = tl.steps

    def add(kind, step, start=None, end=None, feature=None, src=None, dst=None,
            lf=None, lt=None, jump=None, matched=None, matched_step=None):
        for key, val in zip(EVENT_COLUMNS, (point_id, kind, step, start, end, feature, src, dst,
                                            lf, lt, jump, matched, matched_step)):
            rows[key].append(val)

    for p in tl.plateaus:
        add("plateau", int(steps[p.start]), int(steps[p.start]), int(steps[p.end]),
            lf=float(loss[p.start]), lt=float(loss[p.end]))
    at = [t.at for t in tl.transitions] + [c.at for c in tl.changes]
    for d, (drop, hits) in enumerate(zip(tl.drops, tl.drop_matches)):
        nearest = min(hits, key=lambda h: (abs(at[h] - drop.at), at[h])) if hits else None
        add("drop", int(steps[drop.at]), int(steps[drop.start]), int(steps[drop.end]),
            lf=float(loss[drop.before]), lt=float(loss[drop.after]), jump=tl.drop_jumps[d],
            matched=tl.drop_changes_geometry(d),
            matched_step=None if nearest is None else int(steps[at[nearest]]))
    n_t = len(tl.transitions)
    for e, owner in enumerate(tl.event_owner.tolist()):
        ms = int(steps[tl.drops[owner].at]) if owner >= 0 else None
        if e < n_t:
            t = tl.transitions[e]
            add("learned" if t.learned else "transition", int(steps[t.at]), feature=t.feature,
                src=None if t.src is None else LEVELS[t.src].text, dst=LEVELS[t.dst].text,
                matched=owner >= 0, matched_step=ms)
        else:
            c = tl.changes[e - n_t]
            add("geometry", int(steps[c.at]), start=int(steps[c.start]), src=c.src, dst=c.dst,
                matched=owner >= 0, matched_step=ms)
    return rows
