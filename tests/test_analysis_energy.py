"""Energy levels: per-level tolerances, the chance baseline of random W, and the excess table."""

import numpy as np
import pandas as pd
import pytest

from analysis.energy import (LEVELS, ZERO, assign_levels, chance_on_level, excess_table, level_counts,
                             random_dimensionality, tolerances)
from analysis.geometry import feature_metrics
from analysis_fixtures import block, rotate, shapes

TOL = tolerances(0.05, 0.4)


def test_no_value_is_on_two_levels():
    D = np.linspace(0, 1, 100_001)
    values = np.array([lv.value for lv in LEVELS])
    on = np.abs(D[:, None] - values) <= TOL
    assert on.sum(axis=1).max() == 1
    assert (assign_levels(D, TOL) == np.where(on.any(axis=1), on.argmax(axis=1), -1)).all()


def test_chance_of_two_features_on_a_line_follows_the_arcsine_law():
    """Two Gaussian columns in one dimension: D_1 = a²/(a² + b²) is arcsine distributed
    (F(x) = 2/π · arcsin √x), so the chance of a nonzero level has a closed form."""
    F = lambda x: 2 / np.pi * np.arcsin(np.sqrt(np.clip(x, 0, 1)))  # noqa: E731
    exact = sum(F(lv.value + t) - F(lv.value - t) for lv, t in zip(LEVELS, TOL) if lv.value > 0)
    assert chance_on_level(1, 2, 0.05, 0.4) == pytest.approx(exact, abs=0.02)
    assert 0.2 < exact < 0.35


def test_a_lone_feature_is_always_dedicated_and_many_random_ones_rarely_on_a_level():
    assert chance_on_level(5, 1, 0.05, 0.4) == 1.0
    assert chance_on_level(10, 0, 0.05, 0.4) == 0.0
    assert chance_on_level(10, 40, 0.05, 0.4) < 0.06
    D = random_dimensionality(10, 40)
    assert len(D) >= 4096 and 0.15 < np.median(D) < 0.3                   # m/(n+m−1)-like, off-level


def test_hand_built_levels_with_trained_noise_sit_on_levels_far_above_chance():
    """A tegum product of the paper's polytopes (dedicated, pairs, triangle, tetrahedron,
    pentagon, square antiprism) with the jitter trained models show on a level: every D_i on
    its level, against ~20 % for random W of the same m and number of features."""
    S = shapes()
    parts = [S["dedicated"], S["antipodal pair"], S["antipodal pair"], S["triangle"], S["tetrahedron"],
             S["pentagon"], S["square antiprism"]]
    rng = np.random.default_rng(0)
    W = rotate(block(*parts), 1)
    W = W + 0.004 * rng.standard_normal(W.shape)
    _, _, D = feature_metrics(W)
    idx = assign_levels(D, TOL)
    want = [0] + [3] * 4 + [2] * 3 + [1] * 4 + [4] * 5 + [5] * 8
    assert idx.tolist() == want
    chance = chance_on_level(W.shape[0], W.shape[1], 0.05, 0.4)
    assert chance < 0.3


def test_excess_table_weighs_chance_by_learned_features():
    keys = pd.DataFrame({"data.density": [0.1, 0.1, 0.01]})
    counts = np.zeros((3, len(LEVELS) + 1), dtype=int)
    counts[0, 3], counts[0, ZERO] = 4, 1          # 4 learned, all at 1/2
    counts[1, 3], counts[1, -1] = 2, 2            # 4 learned, 2 at 1/2, 2 between levels
    counts[2, -1], counts[2, ZERO] = 5, 0         # 5 learned, none on a level
    out = excess_table(keys, counts, np.array([0.2, 0.4, 0.1])).set_index("data.density")
    assert out.loc[0.1, "learned"] == 8 and out.loc[0.1, "on_level"] == pytest.approx(6 / 8)
    assert out.loc[0.1, "chance"] == pytest.approx(0.3)
    assert out.loc[0.1, "excess"] == pytest.approx(0.45)
    assert out.loc[0.01, "on_level"] == 0 and out.loc[0.01, "points"] == 1
    assert level_counts(np.array([0.5, 0.5, 0.0, 0.43]), TOL).tolist() == [0, 0, 0, 2, 0, 0, 1, 1]
