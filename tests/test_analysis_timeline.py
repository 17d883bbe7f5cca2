"""Plateau / drop detection, energy-level transitions and their alignment on synthetic curves."""

import numpy as np
import pytest

from analysis.config import TimelineConfig
from analysis.energy import LEVELS, assign_levels, describe_levels
from analysis.timeline import detect, level_transitions, loss_events
from analysis_fixtures import checkpoint_steps, sigmoid_log, staircase_loss

STEPS = checkpoint_steps(10_000)
TEXT = {lv.text: i for i, lv in enumerate(LEVELS)}


def nearest(step):
    return int(np.argmin(np.abs(np.log10(np.maximum(STEPS, 1)) - np.log10(step))))


def test_staircase_loss_gives_its_plateaus_and_drops():
    at = [30, 400, 3000]
    loss = staircase_loss([0.3, 0.1, 0.07, 0.03], at)(STEPS)
    plateaus, drops = loss_events(STEPS, loss)
    assert len(plateaus) == 4 and len(drops) == 3
    for drop, step in zip(drops, at):
        assert abs(drop.at - nearest(step)) <= 1
        assert STEPS[drop.start] < step < STEPS[drop.end]
        assert drop.before <= drop.start < drop.at <= drop.end <= drop.after
        # the core is where the loss falls: a few checkpoints, not the whole gap between plateaus
        assert np.log10(STEPS[drop.end] / STEPS[drop.start]) < 0.6


def test_noisy_staircase_still_gives_exactly_its_drops():
    rng = np.random.default_rng(0)
    loss = staircase_loss([0.2, 0.12, 0.05], [100, 2000])(STEPS) * np.exp(rng.normal(0, 0.004, len(STEPS)))
    _, drops = loss_events(STEPS, loss)
    assert [abs(d.at - nearest(s)) <= 1 for d, s in zip(drops, [100, 2000])] == [True, True]
    assert len(drops) == 2


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
def test_smooth_power_law_has_no_drops(alpha):
    """Smooth decay whose log-log slope stays clear of plateau_slope (0.15): no drop."""
    loss = 0.5 * np.maximum(STEPS, 1) ** -alpha * np.exp(np.random.default_rng(1).normal(0, 0.002, len(STEPS)))
    _, drops = loss_events(STEPS, loss)
    assert drops == []


def test_drops_smaller_than_min_drop_are_ignored():
    loss = staircase_loss([0.1, 0.085], [300], width=0.03)(STEPS)      # a sharp 15 % drop
    assert loss_events(STEPS, loss, TimelineConfig(min_drop=0.2))[1] == []
    assert len(loss_events(STEPS, loss, TimelineConfig(min_drop=0.1))[1]) == 1


def d_series(moves, n_steps=STEPS):
    """D [T, len(moves)]: feature i goes through the levels of moves[i] = [(level, at), …]."""
    out = []
    for start, *rest in moves:
        d = np.full(len(n_steps), start, dtype=float)
        prev = start
        for level, at in rest:
            d += sigmoid_log(n_steps, at, 0.04) * (level - prev)
            prev = level
        out.append(d)
    return np.stack(out, axis=1)


def test_level_transitions_between_settled_levels():
    D = d_series([(1.0, (0.5, 500)), (0.0, (0.5, 500), (0.4, 3000)), (0.5,)])
    trans, settled = level_transitions(D, 0.05, 3)
    got = [(t.feature, LEVELS[t.src].text, LEVELS[t.dst].text) for t in trans]
    assert got == [(0, "1", "1/2"), (1, "0", "1/2"), (1, "1/2", "2/5")]
    assert abs(trans[0].at - nearest(500)) <= 1 and abs(trans[2].at - nearest(3000)) <= 1
    assert (settled[:, 2] == TEXT["1/2"]).all()


def test_passing_through_a_level_is_not_a_transition():
    # 0 → 1/2 slowly enough to spend two checkpoints near 3/8 and 2/5 on the way
    D = 0.5 * sigmoid_log(STEPS, 300, 0.25)[:, None]
    trans, _ = level_transitions(D, 0.05, 3)
    assert [(LEVELS[t.src].text, LEVELS[t.dst].text) for t in trans] == [("0", "1/2")]


def test_assign_levels_picks_the_nearest_level_within_tolerance():
    got = assign_levels(np.array([0.99, 0.69, 0.39, 0.37, 0.45, 0.58, np.nan]), 0.05)
    assert [LEVELS[i].text if i >= 0 else None for i in got] == ["1", "2/3", "2/5", "3/8", "1/2", None, None]
    assert describe_levels([TEXT["2/5"]] * 5) == "pentagon ×1"
    assert describe_levels([TEXT["1/2"]] * 4 + [TEXT["0"]]) == "antipodal pair ×2 + not learned ×1"


def test_drops_align_with_transitions_at_the_same_checkpoint():
    # drops at 50 (features learned) and 800 (pairs → pentagon); an extra drop at 5000 with no
    # geometry change; a transition at 2000 during a plateau.
    loss = staircase_loss([0.3, 0.1, 0.06, 0.03], [50, 800, 5000])(STEPS)
    D = d_series([(0.0, (0.5, 50), (0.4, 800))] * 4 + [(0.0, (0.4, 800))] + [(1.0, (0.5, 2000))])
    norm = np.ones_like(D)
    tl = detect(STEPS, loss, STEPS, D, norm, learned_norm=0.5, level_tol=0.05)
    assert len(tl.drops) == 3
    matched = [bool(h) for h in tl.drop_matches]
    assert matched == [True, True, False]
    owner = {(t.feature, LEVELS[t.dst].text): int(o) for t, o in zip(tl.transitions, tl.event_owner)}
    assert owner[(0, "1/2")] == 0 and owner[(4, "2/5")] == 1 and owner[(0, "2/5")] == 1
    assert owner[(5, "1/2")] == -1                         # during a plateau: unmatched
    changes = [(c.src, c.dst) for c in tl.changes]
    assert ("dedicated ×1 + antipodal pair ×2 + not learned ×1", "dedicated ×1 + pentagon ×1") in changes


def test_masking_turns_weak_columns_into_not_learned():
    D = np.full((len(STEPS), 1), 0.97)
    norm = np.where(STEPS < 1000, 0.1, 1.0)[:, None]      # learned only from step 1000
    tl = detect(STEPS, np.ones(len(STEPS)), STEPS, D, norm, learned_norm=0.5, level_tol=0.05)
    assert [(LEVELS[t.src].text, LEVELS[t.dst].text) for t in tl.transitions] == [("0", "1")]


def test_short_series_and_a_last_minute_move():
    D = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.5]])      # feature 1 moves at the end
    trans, settled = level_transitions(D, 0.05, 3)
    assert trans == [] and settled[3, 1] == -1 and (settled[:, 0] == TEXT["1"]).all()
    assert level_transitions(D[:2], 0.05, 3)[0] == []                   # fewer checkpoints than min_dwell
    tl = detect(STEPS[:2], np.ones(2), STEPS[:2], D[:2], np.ones((2, 2)), 0.5, 0.05)
    assert tl.drops == [] and tl.transitions == []


def test_d_halfway_between_two_levels_does_not_flicker():
    rng = np.random.default_rng(3)
    # settles at 1/2, then drifts to 0.45 (halfway to 2/5) and jitters there
    D = np.concatenate([np.full(10, 0.5), 0.45 + 0.002 * rng.standard_normal(40)])[:, None]
    trans, settled = level_transitions(D, 0.05, 3)
    assert trans == []
    # but a clear move to 2/5 is a transition
    D2 = np.concatenate([D[:, 0], np.full(6, 0.405)])[:, None]
    trans, _ = level_transitions(D2, 0.05, 3)
    assert [(LEVELS[t.src].text, LEVELS[t.dst].text, t.at) for t in trans] == [("1/2", "2/5", 50)]
