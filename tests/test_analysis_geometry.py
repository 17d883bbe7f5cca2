"""Per-feature metrics, tegum-factor labels and neuron counts on hand-built weights."""

import numpy as np
import pytest

from analysis.config import GeometryConfig
from analysis.geometry import describe, feature_metrics, tegum_factors
from analysis.neurons import count_neurons, rescale
from analysis_fixtures import (antipodal, block, metrics_from_W, polygon, rotate, square_antiprism,
                               tetrahedron)


def labels(W, learned_norm=0.5):
    factors, unlearned = tegum_factors(W, learned_norm)
    return sorted((f.name, f.k, f.d, f.uniform) for f in factors), unlearned


@pytest.mark.parametrize("W, level", [
    (antipodal(), 1 / 2), (polygon(3), 2 / 3), (tetrahedron(), 3 / 4), (polygon(5), 2 / 5),
    (square_antiprism(), 3 / 8), (np.eye(3), 1.0)])
def test_dimensionality_of_uniform_polytopes_is_d_over_k(W, level):
    norm, interference, dim = feature_metrics(rotate(block(W, m=W.shape[0] + 2), seed=3))
    np.testing.assert_allclose(norm, 1.0, atol=1e-12)
    np.testing.assert_allclose(dim, level, atol=1e-9)
    assert np.all(interference >= 0)


def test_metrics_match_the_store_definitions_and_mask_dead_columns():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 9))
    W[:, 3] = 0.0
    W[:, 5] = 1e-5
    got = feature_metrics(W)
    want = metrics_from_W(W)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-9)
    assert got[2][3] == 0 and got[2][5] == 0 and got[1][3] == 0


@pytest.mark.parametrize("W, name, k, d", [
    (antipodal(), "antipodal pair", 2, 1), (polygon(3), "triangle", 3, 2),
    (polygon(5), "pentagon", 5, 2), (tetrahedron(), "tetrahedron", 4, 3),
    (square_antiprism(), "square antiprism", 8, 3), (polygon(7), "7 in 2", 7, 2)])
def test_single_polytopes_are_named(W, name, k, d):
    W = rotate(block(W, m=5), seed=1) + 1e-3 * np.random.default_rng(2).normal(size=(5, W.shape[1]))
    got, unlearned = labels(W)
    assert got == [(name, k, d, True)]
    assert unlearned == []


def test_triangular_bipyramid_splits_into_triangle_and_antipodal_pair():
    # 5 vectors in 3-D: a triangle in the xy-plane and a pair along z (orthogonal to it).
    W = block(polygon(3), antipodal())
    assert W.shape == (3, 5)
    _, _, dim = feature_metrics(W)
    np.testing.assert_allclose(dim, [2 / 3] * 3 + [1 / 2] * 2, atol=1e-12)
    got, _ = labels(rotate(W, seed=4))
    assert got == [("antipodal pair", 2, 1, True), ("triangle", 3, 2, True)]
    factors, _ = tegum_factors(W, 0.5)
    assert [f.features for f in factors] == [(0, 1, 2), (3, 4)]


def test_octahedron_is_three_antipodal_pairs_and_dead_features_are_not_learned():
    W = block(antipodal(), antipodal(), antipodal(), n_zero=2)
    W[0, 6] = 0.2  # a weak column: below the learned threshold
    got, unlearned = labels(rotate(W, seed=5))
    assert got == [("antipodal pair", 2, 1, True)] * 3
    assert unlearned == [6, 7]
    factors, unlearned = tegum_factors(W, 0.5)
    assert describe(factors, len(unlearned)) == "antipodal pair ×3 + not learned ×2"


def test_intro_geometries_of_n5_m2():
    dense = block(np.eye(2), n_zero=3)
    pairs = np.array([[1, -1, 0, 0, 0], [0, 0, 1, -1, 0]], dtype=float)
    assert describe(*_fu(dense)) == "dedicated ×2 + not learned ×3"
    assert describe(*_fu(pairs)) == "antipodal pair ×2 + not learned ×1"
    assert describe(*_fu(polygon(5))) == "pentagon ×1"


def _fu(W):
    factors, unlearned = tegum_factors(W, 0.5)
    return factors, len(unlearned)


def test_non_uniform_and_parallel_factors_are_flagged():
    # a squashed triangle: still 3 in 2, but D_i away from 2/3
    W = np.array([[1.0, -0.9, -0.9], [0.0, 0.45, -0.45]])
    W = W / np.linalg.norm(W, axis=0)
    (f,), _ = tegum_factors(W, 0.5)
    assert (f.name, f.uniform) == ("triangle", False)
    # two features sharing one direction (a collapsed correlated pair) are no antipodal pair
    (g,), _ = tegum_factors(np.array([[1.0, 0.9]]), 0.5)
    assert g.name == "2 in 1"


def test_edge_threshold_decides_what_counts_as_interference():
    W = np.array([[1.0, 0.05], [0.0, 1.0]])
    W = W / np.linalg.norm(W, axis=0)
    tight, _ = tegum_factors(W, 0.5, GeometryConfig(edge_eps=0.01))
    loose, _ = tegum_factors(W, 0.5, GeometryConfig(edge_eps=0.1))
    assert [f.name for f in tight] == ["2 in 2"]
    assert [f.name for f in loose] == ["dedicated", "dedicated"]


def test_neuron_counts_for_privileged_basis_and_abs():
    # relu_hidden: neuron 0 reads feature 0 only (negative weights cannot drive it), neuron 1 reads
    # features 1 and 2, neuron 2 is dead.
    W = np.array([[1.0, -0.8, 0.0], [0.0, 0.7, 0.6], [0.01, 0.0, 0.0]])
    c = count_neurons(W, "relu_hidden")
    assert (c.monosemantic, c.polysemantic, c.dead) == (1, 1, 1)
    # abs: signed inputs, so the negative weight counts
    c = count_neurons(W, "abs")
    assert (c.monosemantic, c.polysemantic, c.dead) == (0, 2, 1)


def test_rescale_keeps_the_network_function():
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(size=(4, 6)), rng.normal(size=(6, 4))
    V1, V2 = rescale(W1, W2)
    np.testing.assert_allclose(np.abs(V1).max(axis=1), 1.0)
    x = rng.normal(size=6)
    np.testing.assert_allclose(V2 @ np.maximum(V1 @ x, 0), W2 @ np.maximum(W1 @ x, 0), atol=1e-12)
