"""Per-feature metrics, tegum factors and polytope names: hand-built shapes with the noise of
trained models, random W (chance), trained models at n = 40, and neuron counts."""

import numpy as np
import pytest

from analysis.config import GeometryConfig
from analysis.geometry import POLYTOPES, describe, feature_metrics, label, shape_deviation, tegum_factors
from analysis.neurons import count_neurons, rescale
from analysis_fixtures import (antipodal, block, cube, metrics_from_W, polygon, rotate, shapes,
                               square_antiprism, tetrahedron, trained_noise)
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train

SHAPES = shapes()
LEVEL = {"dedicated": 1, "antipodal pair": 1 / 2, "triangle": 2 / 3, "tetrahedron": 3 / 4, "pentagon": 2 / 5,
         "hexagon": 1 / 3, "heptagon": 2 / 7, "octagon": 1 / 4, "square antiprism": 3 / 8, "cube": 3 / 8,
         "icosahedron": 1 / 4}


def names(W, learned_norm=0.5, cfg=GeometryConfig()):
    factors, unlearned = tegum_factors(W, learned_norm, cfg)
    return sorted(f.name for f in factors), unlearned


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_dimensionality_of_uniform_polytopes_is_d_over_k(name):
    """Each shape is a tight frame: D_i = d/k, the energy level the paper draws."""
    V = SHAPES[name]
    norm, interference, dim = feature_metrics(rotate(block(V, m=V.shape[0] + 2), seed=3))
    np.testing.assert_allclose(norm, 1.0, atol=1e-12)
    np.testing.assert_allclose(dim, LEVEL[name], atol=1e-9)
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


def test_every_named_shape_matches_its_own_profile_only():
    """The fixtures build each shape independently of the analysis; each is 0 from its own
    profile and far from every other shape of the same k and d (cube vs square antiprism)."""
    assert {p.name for p in POLYTOPES} == set(SHAPES)
    for p in POLYTOPES:
        V = SHAPES[p.name]
        assert V.shape == (p.d, p.k) and np.linalg.matrix_rank(V) == p.d
        assert shape_deviation(V, p) < 1e-12
        for q in POLYTOPES:
            if q is not p and (q.k, q.d) == (p.k, p.d):
                assert shape_deviation(V, q) > 0.25, (p.name, q.name)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_is_named_rotated_and_with_trained_noise(name):
    V = SHAPES[name]
    for seed in range(10):
        W = trained_noise(rotate(block(V, m=V.shape[0] + 3), seed), seed)
        (f,), unlearned = tegum_factors(W, 0.5)
        assert (f.name, f.k, f.d, unlearned) == (name, V.shape[1], V.shape[0], []), (seed, f)


def test_tegum_product_of_every_shape_splits_into_its_factors_despite_noise():
    """All eleven shapes in orthogonal subspaces of a 24-dimensional space (64 features), randomly
    rotated, with trained-model noise (cross-factor |cos| reaching ~0.15) and shuffled features:
    every factor is found with its members and named. The old rule (link at |cos| > 0.1) merges
    factors in every one of these models."""
    parts = list(SHAPES.values())
    W0 = block(*parts)
    owner = np.repeat(np.arange(len(parts)), [p.shape[1] for p in parts])
    found, merged_by_old_rule, noise = 0, 0, []
    for seed in range(20):
        perm = np.random.default_rng(seed).permutation(W0.shape[1])
        W = trained_noise(rotate(W0, seed), seed)[:, perm]
        factors, unlearned = tegum_factors(W, 0.5)
        groups = {tuple(sorted(set(owner[perm][list(f.features)]))): f.name for f in factors}
        found += (unlearned == [] and len(factors) == len(parts)
                  and groups == {(i,): name for i, name in enumerate(SHAPES)})
        merged_by_old_rule += len(tegum_factors(W, 0.5, GeometryConfig(edge_eps=0.1))[0]) < len(parts)
        U = W / np.linalg.norm(W, axis=0)
        noise.append(np.abs(U.T @ U)[owner[perm][:, None] != owner[perm][None, :]].max())
    assert found == 20
    assert merged_by_old_rule == 20 and np.median(noise) > 0.12


def test_random_w_is_never_named_a_polytope():
    """Chance: random Gaussian W of the sizes the tests use, and of n=40 in m=10, are one
    tangle ("k in d") or unnamed; a random arrangement of k ≥ 3 vectors matches a polytope's
    profile in well under 1 % of draws."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        fs, _ = names(rng.normal(size=(10, 40)))
        assert fs == ["40 in 10"]
    for p in POLYTOPES:
        if p.k >= 3:
            hits = sum(shape_deviation(rng.normal(size=(p.d, p.k)), p) <= GeometryConfig().shape_tol
                       for _ in range(2000))
            assert hits <= 20, (p.name, hits)


def test_cube_is_not_a_square_antiprism_and_distorted_shapes_are_not_named():
    assert names(rotate(cube(), 1))[0] == ["cube"]
    assert names(rotate(square_antiprism(), 1))[0] == ["square antiprism"]
    # a pentagon with one vertex moved by 20°, and one with a vertex half as long: "5 in 2"
    a = 2 * np.pi * np.arange(5) / 5
    a[0] += np.radians(20)
    assert names(np.stack([np.cos(a), np.sin(a)]))[0] == ["5 in 2"]
    short = polygon(5) * np.array([1, 1, 1, 1, 0.6])
    (f,), _ = tegum_factors(short, 0.5)
    assert (f.name, f.shape, f.deviation < 1e-9, f.norm_spread > 0.2) == ("5 in 2", "pentagon", True, True)
    # a stretched tetrahedron still spans 3 dimensions but is no tetrahedron
    stretched = tetrahedron() * np.array([[1.0], [1.0], [1.4]])
    assert names(stretched)[0] == ["4 in 3"]


def test_square_and_octahedron_are_antipodal_pairs_and_weak_columns_not_learned():
    assert names(rotate(block(antipodal(), antipodal()), 2))[0] == ["antipodal pair"] * 2
    W = block(antipodal(), antipodal(), antipodal(), n_zero=2)
    W[0, 6] = 0.2  # a weak column: below the learned threshold
    got, unlearned = names(rotate(W, seed=5))
    assert got == ["antipodal pair"] * 3 and unlearned == [6, 7]
    factors, unlearned = tegum_factors(W, 0.5)
    assert describe(factors, len(unlearned)) == "antipodal pair ×3 + not learned ×2"


def test_triangular_bipyramid_splits_into_triangle_and_antipodal_pair():
    W = block(polygon(3), antipodal())
    _, _, dim = feature_metrics(W)
    np.testing.assert_allclose(dim, [2 / 3] * 3 + [1 / 2] * 2, atol=1e-12)
    factors, _ = tegum_factors(rotate(W, seed=4), 0.5)
    assert [(f.features, f.name, f.uniform) for f in factors] == [
        ((0, 1, 2), "triangle", True), ((3, 4), "antipodal pair", True)]


def test_intro_geometries_of_n5_m2_and_parallel_features():
    assert label(block(np.eye(2), n_zero=3), 0.5) == "dedicated ×2 + not learned ×3"
    assert label(np.array([[1, -1, 0, 0, 0], [0, 0, 1, -1, 0]], dtype=float), 0.5) == \
        "antipodal pair ×2 + not learned ×1"
    assert label(polygon(5), 0.5) == "pentagon ×1"
    assert label(np.array([[1.0, 0.9]]), 0.5) == "2 in 1 ×1"      # two features sharing a direction


def test_a_feature_inside_another_factors_subspace_merges_them():
    """Linking only |cos| > 0.6, a feature at 55° to an antipodal pair is not linked to it, but
    0.57 of its direction lies in the pair's line: the subspace check merges them."""
    pair = np.array([[1.0, -1.0], [0.0, 0.0]])
    third = np.array([[np.cos(np.radians(55))], [np.sin(np.radians(55))]])
    W = np.concatenate([pair, third], axis=1)
    merged, _ = tegum_factors(W, 0.5, GeometryConfig(edge_eps=0.6, leak_max=0.5))
    split, _ = tegum_factors(W, 0.5, GeometryConfig(edge_eps=0.6, leak_max=0.9))
    assert [f.name for f in merged] == ["3 in 2"]
    assert [f.name for f in split] == ["antipodal pair", "dedicated"]
    assert split[0].leak == pytest.approx(np.cos(np.radians(55)))


@pytest.fixture(scope="module")
def trained_n40():
    """n=40, m=10, all importances 1, density 0.3, 6,000 steps, two seeds (~10 s)."""
    pts = [PointSpec(ModelConfig("relu_out", 40, 10), DataConfig(density=0.3),
                     TrainConfig(steps=6000, log_checkpoints=2, linear_checkpoints=1), seed=s) for s in range(2)]
    return train(pts, compile=False).W


def test_trained_models_at_n40_are_named_as_wtw_shows(trained_n40):
    """Density 0.3 at n=40, m=10: each seed stores 20 features as 10 antipodal pairs (D* = 1/2)
    and drops the other 20. The names agree with WᵀW: each named pair's cosine is below −0.95,
    other learned features are orthogonal to it within 0.1. Random W of the same size is one
    unnamed tangle (test above)."""
    for W in trained_n40:
        factors, unlearned = tegum_factors(W, 0.5)
        assert describe(factors, len(unlearned)) == "antipodal pair ×10 + not learned ×20"
        U = W / np.linalg.norm(W, axis=0)
        C = U.T @ U
        for f in factors:
            i, j = f.features
            others = [x for g in factors if g is not f for x in g.features]
            assert C[i, j] < -0.95 and np.abs(C[[i, j]][:, others]).max() < 0.1


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
