"""Plateaus and drops, level jumps, geometry events and their alignment, on synthetic curves
with the noise trained models have and on curves with no structure (chance)."""

import numpy as np
import pytest

from analysis.config import TimelineConfig
from analysis.energy import LEVELS, assign_levels, describe_levels, tolerances
from analysis.timeline import detect, label_changes, level_transitions, loss_events, trained_from
from analysis_fixtures import checkpoint_steps, sigmoid_log, staircase_loss

STEPS = checkpoint_steps(10_000)
TEXT = {lv.text: i for i, lv in enumerate(LEVELS)}
TOL = tolerances(0.05, 0.4)


def nearest(step):
    return int(np.argmin(np.abs(np.log10(np.maximum(STEPS, 1)) - np.log10(step))))


def moves(trans):
    return [(t.feature, None if t.src is None else LEVELS[t.src].text, LEVELS[t.dst].text) for t in trans]


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
    """Chance for the loss: smooth decay whose log-log slope stays clear of plateau_slope."""
    loss = 0.5 * np.maximum(STEPS, 1) ** -alpha * np.exp(np.random.default_rng(1).normal(0, 0.002, len(STEPS)))
    _, drops = loss_events(STEPS, loss)
    assert drops == []


def test_drops_smaller_than_min_drop_are_ignored():
    loss = staircase_loss([0.1, 0.085], [300], width=0.03)(STEPS)      # a sharp 15 % drop
    assert loss_events(STEPS, loss, TimelineConfig(min_drop=0.2))[1] == []
    assert len(loss_events(STEPS, loss, TimelineConfig(min_drop=0.1))[1]) == 1


def d_series(moves_, steps=STEPS, noise=0.0, seed=0):
    """Masked D [T, len(moves_)]: feature i goes through the levels of moves_[i] = [start,
    (level, at), …], plus N(0, noise²) per checkpoint (trained D_i on a level jitter by ~0.003);
    below 0.02 it is 0, as the analysis masks a feature too small to count as learned."""
    out = []
    for start, *rest in moves_:
        d = np.full(len(steps), start, dtype=float)
        prev = start
        for level, at in rest:
            d += sigmoid_log(steps, at, 0.04) * (level - prev)
            prev = level
        out.append(d)
    D = np.stack(out, axis=1)
    D = D + noise * np.random.default_rng(seed).standard_normal(D.shape)
    return np.where(D < 0.02, 0.0, D)


def test_level_tolerances_are_narrower_than_half_the_gaps():
    values = np.array([lv.value for lv in LEVELS])
    for i, t in enumerate(TOL[:-1]):
        gap = np.min(np.abs(np.delete(values, i) - values[i]))
        assert t < gap / 2
    assert TOL[TEXT["2/5"]] == pytest.approx(0.01) and TOL[TEXT["1/2"]] == pytest.approx(0.04)
    got = assign_levels(np.array([0.99, 0.69, 0.395, 0.378, 0.387, 0.45, 0.58, 0.0, 0.02, np.nan]), TOL)
    assert [LEVELS[i].text if i >= 0 else None for i in got] == \
        ["1", "2/3", "2/5", "3/8", None, None, None, "0", None, None]
    assert describe_levels([TEXT["2/5"]] * 5) == "pentagon ×1"
    assert describe_levels([TEXT["1/2"]] * 4 + [TEXT["0"]]) == "antipodal pair ×2 + not learned ×1"


def test_transitions_between_settled_levels_with_trained_noise():
    D = d_series([(1.0, (0.5, 500)), (0.0, (0.5, 500), (0.4, 3000)), (0.5,)], noise=0.003)
    trans, settled = level_transitions(D, TOL, 3)
    assert moves(trans) == [(0, "1", "1/2"), (1, "0", "1/2"), (1, "1/2", "2/5")]
    assert abs(trans[0].at - nearest(500)) <= 1 and abs(trans[2].at - nearest(3000)) <= 1
    assert (settled[:, 2] == TEXT["1/2"]).all()


def test_first_settling_is_learned_not_a_transition():
    """A feature that starts between levels (random initialisation) and settles at 1/2 is
    learned there; only a later move from 1/2 to 2/5 is a transition."""
    D = d_series([(0.61, (0.5, 200), (0.4, 3000))], noise=0.003)
    trans, _ = level_transitions(D, TOL, 3, start=nearest(100))
    assert moves(trans) == [(0, None, "1/2"), (0, "1/2", "2/5")]
    assert trans[0].learned and not trans[1].learned


def test_a_random_start_on_a_level_is_not_taken_before_the_loss_moves():
    """At initialisation a D_i may sit on a level by chance (here 0.51 near 1/2) for many
    checkpoints; until the loss has fallen, that is no settling, so the later move to 2/3 is
    the feature being learned, not a transition."""
    loss = staircase_loss([0.1, 0.02], [300])(STEPS)
    D = d_series([(0.51, (2 / 3, 300))], noise=0.002)
    start = trained_from(loss, 0.1)
    assert 100 < STEPS[start] < 300
    assert moves(level_transitions(D, TOL, 3, start=start)[0]) == [(0, None, "2/3")]
    assert moves(level_transitions(D, TOL, 3, start=0)[0]) == [(0, "1/2", "2/3")]   # what the old rule saw


def test_passing_through_a_level_is_not_a_transition():
    # 0 → 1/2 slowly enough to spend checkpoints near 3/8 and 2/5 on the way
    D = 0.5 * sigmoid_log(STEPS, 300, 0.25)[:, None]
    D = np.where(D < 0.02, 0.0, D)
    trans, _ = level_transitions(D, TOL, 3)
    assert moves(trans) == [(0, "0", "1/2")]


def test_wobble_between_two_fifths_and_three_eighths_is_no_transition():
    """D_i jittering around 0.39 (between 3/8 and 2/5, 0.025 apart) at the noise of trained
    models: with tolerances of 0.01 and hysteresis it never moves; a real move is still seen."""
    rng = np.random.default_rng(3)
    D = np.concatenate([np.full(10, 0.4), 0.3875 + 0.006 * rng.standard_normal(60)])[:, None]
    trans, _ = level_transitions(D, TOL, 3)
    assert trans == []
    D2 = np.concatenate([np.full(10, 0.4), 0.375 + 0.002 * rng.standard_normal(20)])[:, None]
    assert [(LEVELS[t.src].text, LEVELS[t.dst].text) for t in level_transitions(D2, TOL, 3)[0]] == \
        [("2/5", "3/8")]


def test_smooth_drift_between_random_values_gives_no_events():
    """Chance: features drifting smoothly (no plateaus) between random D_i values pass through
    levels without stopping; no transition, no learned event."""
    rng = np.random.default_rng(4)
    low, high = rng.choice([0.2, 0.3, 0.45], 12), rng.choice([0.58, 0.71, 0.86], 12)   # between levels
    up = rng.random(12) < 0.5
    start, end = np.where(up, low, high), np.where(up, high, low)
    w = np.clip((np.log10(np.maximum(STEPS, 1)) - 1.5) / 1.5, 0, 1)[:, None]   # over steps 30 … 1000
    D = start + (end - start) * w + 0.002 * rng.standard_normal((len(STEPS), 12))
    assert (assign_levels(D[:, :], TOL) >= 0).any(axis=0).all()         # every feature crosses levels
    assert level_transitions(D, TOL, 3, start=nearest(30))[0] == []


def test_label_changes_need_stable_labels():
    a, b, c = "triangle ×2", "6 in 3 ×1", "antipodal pair ×3"
    labels = [a] * 5 + [b, a, b, b] + [c] * 6                # a flicker, then a settled change
    got = label_changes(labels, 3)
    assert [(g.src, g.dst, g.start, g.at) for g in got] == [(a, c, 5, 9)]
    assert label_changes([a, a, b, b, a, a], 3) == []
    assert label_changes([None, None, None, a, a, a], 3) == []


def test_drops_align_with_level_jumps_and_geometry_events():
    # drops at 50 (features learned from 0), 600 (pairs → pentagon) and 5000 (no geometry
    # change); a level jump at 2000 during a plateau.
    loss = staircase_loss([0.3, 0.1, 0.06, 0.03], [50, 600, 5000])(STEPS)
    D = d_series([(0.0, (0.5, 50), (0.4, 600))] * 4 + [(0.0, (0.4, 600))] + [(1.0, (0.5, 2000))], noise=0.002)
    tl = detect(STEPS, loss, STEPS, D, np.ones_like(D), learned_norm=0.5, level_tol=TOL)
    assert len(tl.drops) == 3 and not tl.from_weights
    assert [bool(h) for h in tl.drop_matches] == [True, True, False] and tl.unmatched_drops == [2]
    owner = {(t.feature, LEVELS[t.dst].text): int(o) for t, o in zip(tl.transitions, tl.event_owner)}
    assert owner[(0, "1/2")] == 0 and owner[(4, "2/5")] == 1 and owner[(0, "2/5")] == 1
    assert owner[(5, "1/2")] == -1                         # during a plateau: unmatched
    changes = [(c.src, c.dst) for c in tl.changes]
    assert ("dedicated ×1 + antipodal pair ×2 + not learned ×1", "dedicated ×1 + pentagon ×1") in changes


def test_a_drop_with_only_learned_features_has_no_match_but_a_geometry_label_change_does():
    """Random start (between levels) → features learned at the drop: no level jump. With W at
    every checkpoint, the label's change at a later drop is the match."""
    loss = staircase_loss([0.3, 0.1, 0.05], [100, 2000])(STEPS)
    D = d_series([(0.6, (0.5, 100))] * 4, noise=0.002)
    tl = detect(STEPS, loss, STEPS, D, np.ones_like(D), 0.5, TOL)
    assert [t.learned for t in tl.transitions] == [True] * 4
    assert tl.unmatched_drops == [0, 1]
    labels = ["4 in 2 ×1"] * nearest(150) + ["4 in 2 ×1"] * (nearest(2000) - nearest(150)) + \
        ["antipodal pair ×2"] * (len(STEPS) - nearest(2000))
    tl = detect(STEPS, loss, STEPS, D, np.ones_like(D), 0.5, TOL, label_steps=STEPS, labels=labels)
    assert tl.from_weights and [(c.src, c.dst) for c in tl.changes] == [("4 in 2 ×1", "antipodal pair ×2")]
    assert tl.unmatched_drops == [0]


def test_masking_turns_weak_columns_into_not_learned():
    D = np.full((len(STEPS), 1), 0.97)
    norm = np.where(STEPS < 1000, 0.1, 1.0)[:, None]      # learned only from step 1000
    tl = detect(STEPS, np.ones(len(STEPS)), STEPS, D, norm, learned_norm=0.5, level_tol=TOL)
    assert moves(tl.transitions) == [(0, "0", "1")]


def test_short_series_and_a_last_minute_move():
    D = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.5]])      # feature 1 moves at the end
    trans, settled = level_transitions(D, TOL, 3)
    assert trans == [] and settled[3, 1] == -1 and (settled[:, 0] == TEXT["1"]).all()
    assert level_transitions(D[:2], TOL, 3)[0] == []                   # fewer checkpoints than min_dwell
    tl = detect(STEPS[:2], np.ones(2), STEPS[:2], D[:2], np.ones((2, 2)), 0.5, TOL)
    assert tl.drops == [] and tl.transitions == []
