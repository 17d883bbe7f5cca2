"""Analytic phase boundaries, the extra feature's classifier and the seed aggregation."""

import numpy as np
import pandas as pd
import pytest

from analysis.geometry import feature_metrics
from analysis.phase import (TRIPLE_DENSITY, add_theory, aggregate_cells, agreement, analytic_label,
                            boundary_distance, classify_extra, expected_losses_n2m1, lower_boundary,
                            upper_boundary)
from analysis_fixtures import phase_losses, phase_weights


@pytest.mark.parametrize("s, lo, hi", [(0.5, 0.667, 1.5), (0.3, 0.24, 4.17), (0.1, 0.057, 17.5)])
def test_n2m1_boundaries_match_the_paper_examples(s, lo, hi):
    assert lower_boundary(s) == pytest.approx(lo, abs=5e-4)
    assert upper_boundary(s) == pytest.approx(hi, abs=5e-3)
    labels = analytic_label(2, 1, np.full(3, s), np.array([lo * 0.97, np.sqrt(lo * hi), hi * 1.03]))
    assert list(labels) == ["not_learned", "superposition", "dedicated"]


def test_triple_point_and_no_superposition_above_four_sevenths():
    assert lower_boundary(TRIPLE_DENSITY) == pytest.approx(1.0)
    assert upper_boundary(TRIPLE_DENSITY) == pytest.approx(1.0)
    r = np.geomspace(0.1, 10, 41)
    for n, m in ((2, 1), (3, 2)):
        labels = analytic_label(n, m, np.full_like(r, 0.6), r)
        assert "superposition" not in set(labels)
        assert set(labels[r < 1]) == {"not_learned"} and set(labels[r > 1]) == {"dedicated"}


@pytest.mark.parametrize("n, m", [(2, 1), (3, 2)])
def test_closed_forms_agree_with_the_expected_loss_argmin(n, m):
    """The closed-form regions equal the argmin over the candidate solutions' expected losses."""
    s, r = np.meshgrid(np.geomspace(0.01, 0.99, 60), np.geomspace(0.1, 10, 60))
    s, r = s.ravel(), r.ravel()
    labels = analytic_label(n, m, s, r)
    checked = 0
    for si, ri, lab in zip(s, r, labels):
        losses = phase_losses(n, si, ri)
        best = sorted(losses.values())
        if best[1] - best[0] < 1e-9 * max(best[0], 1e-12):  # on a boundary: a tie
            continue
        assert min(losses, key=losses.get) == lab, (n, si, ri)
        checked += 1
    assert checked > 3500


def test_expected_losses_cross_on_the_boundaries():
    s = np.array([0.05, 0.2, 0.4])
    lo = expected_losses_n2m1(s, lower_boundary(s))
    np.testing.assert_allclose(lo["not_learned"], lo["superposition"], rtol=1e-12)
    hi = expected_losses_n2m1(s, upper_boundary(s))
    np.testing.assert_allclose(hi["dedicated"], hi["superposition"], rtol=1e-12)


def test_boundary_distance_in_decades():
    s = np.array([0.3, 0.3, 0.8, 0.05])
    r = np.array([lower_boundary(0.3), 1.0, 1.0, 1.0])
    d = boundary_distance(2, 1, s, r)
    assert d[0] == pytest.approx(0, abs=2e-3)          # on the lower curve
    assert d[1] > 0.2                                   # inside the superposition wedge
    assert d[2] == pytest.approx(0, abs=1e-9)          # on the r = 1 line right of 4/7
    # n=3, m=2 has r = 1 as a boundary for every density
    assert boundary_distance(3, 2, s[3:], r[3:])[0] == pytest.approx(0, abs=1e-9)
    assert boundary_distance(2, 1, s[3:], r[3:])[0] > 0.5


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("phase", ["not_learned", "dedicated", "superposition"])
def test_classifier_on_hand_built_solutions(n, phase):
    for s in (0.1, 0.3):
        norm, interference, _ = feature_metrics(phase_weights(n, phase, s))
        assert classify_extra(norm[-1], interference[-1], 0.5, 0.25) == phase


def test_classifier_thresholds_are_configurable():
    assert classify_extra(0.45, 0.0, 0.5, 0.25) == "not_learned"
    assert classify_extra(0.45, 0.0, 0.4, 0.25) == "dedicated"
    assert classify_extra(0.9, 0.3, 0.5, 0.25) == "superposition"
    assert classify_extra(0.9, 0.3, 0.5, 0.5) == "dedicated"


def _seeds():
    return pd.DataFrame({
        "cell_id": ["a", "a", "a", "b"], "point_id": ["p1", "p2", "p3", "p4"], "seed": [0, 1, 2, 0],
        "final_loss": [0.3, 0.1, 0.2, 0.5], "extra_norm": [0.0, 1.0, 0.8, 1.0],
        "extra_interference": [0.0, 1.0, 0.6, 0.0], "extra_dimensionality": [0.0, 0.5, 0.6, 1.0]})


def test_best_of_n_keeps_the_lowest_loss_seed():
    cells = aggregate_cells(_seeds(), "best", "final_loss").set_index("cell_id")
    assert cells.loc["a", "point_id"] == "p2" and cells.loc["a", "n_seeds"] == 3
    assert cells.loc["a", "extra_norm"] == 1.0
    assert cells.loc["b", "point_id"] == "p4"


def test_best_of_n_ranks_by_the_shared_selection_loss():
    """Each seed's final_loss comes from its own small batch; selection_loss scores every seed of
    a cell on the same rows, and it decides, even where the two orders disagree."""
    seeds = _seeds().assign(selection_loss=[0.25, 0.27, 0.21, 0.4])
    cells = aggregate_cells(seeds, "best").set_index("cell_id")
    assert cells.loc["a", "point_id"] == "p3" and cells.loc["a", "extra_norm"] == 0.8
    drop = aggregate_cells(seeds, "mean_drop_worst").set_index("cell_id")
    assert drop.loc["a", "extra_norm"] == pytest.approx(0.4)             # p3, p1 kept; p2 dropped
    assert drop.loc["a", "selection_loss"] == pytest.approx(0.23)


def test_mean_drop_worst_averages_all_but_the_highest_loss():
    cells = aggregate_cells(_seeds(), "mean_drop_worst", "final_loss").set_index("cell_id")
    assert cells.loc["a", "extra_norm"] == pytest.approx(0.9)          # p2, p3; p1 dropped
    assert cells.loc["a", "extra_interference"] == pytest.approx(0.8)
    assert cells.loc["a", "final_loss"] == pytest.approx(0.15)
    assert cells.loc["b", "extra_norm"] == 1.0                         # a lone seed is kept


def test_agreement_counts_only_cells_away_from_the_boundary():
    cells = pd.DataFrame({
        "theory": [True, True, True, False], "n_features": [2, 2, 2, 2], "n_hidden": [1, 1, 1, 1],
        "density": [0.1, 0.8, 0.3, 0.1], "relative_importance": [1.0, 3.0, lower_boundary(0.3), 1.0],
        "label": ["superposition", "not_learned", "dedicated", "dedicated"]})
    out = add_theory(cells, margin=0.1)
    assert list(out["analytic_label"][:3]) == ["superposition", "dedicated", "not_learned"]
    assert out["analytic_label"][3] is None
    assert list(out["away_from_boundary"]) == [True, True, False, False]
    assert agreement(out) == (0.5, 2)
