"""The analyses of the experiments beyond the paper, on hand-built data with the noise trained
models have, each against chance: the scaling slope (analysis/scaling.py) and trained against
random packing (analysis/many_features.py)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis.many_features import packing, random_like, welch
from analysis.scaling import slopes
from analysis_fixtures import trained_noise

M = [8, 16, 32, 64, 128]
TRUE_SLOPE = {-0.1: -1.0, 0.1: -0.35}
"""Hand-built laws per weight decay: strong superposition ∝ 1/m, weak a shallower power."""


def scaling_run(seed: int, shuffle: bool = False) -> SimpleNamespace:
    """Two regimes × five widths × three seeds: the best seed follows the law (×(1 ± 5 %) noise),
    the others are 1.5–5× worse by a different factor at every m — a fit through every seed, or
    through the mean, would not recover the law. ``shuffle``: the best losses permuted across m."""
    rng = np.random.default_rng(seed)
    rows = []
    for wd, slope in TRUE_SLOPE.items():
        best = 0.2 * np.array(M, float) ** slope * np.exp(0.05 * rng.standard_normal(len(M)))
        if shuffle:
            best = rng.permutation(best)
        for m, loss in zip(M, best):
            for s, factor in enumerate([1.0, *rng.uniform(1.5, 5.0, 2)]):
                rows.append({"model.n_hidden": m, "train.weight_decay": wd, "seed": s,
                             "data.density_exponent": 1.2, "selection_loss": loss * factor})
    return SimpleNamespace(pts=pd.DataFrame(rows), swept=["model.n_hidden", "train.weight_decay"])


@pytest.mark.parametrize("seed", range(5))
def test_scaling_slope_recovers_each_regimes_law_from_the_best_seed(seed):
    fits = slopes(scaling_run(seed))
    assert len(fits) == 2
    for _, row in fits.iterrows():
        want = TRUE_SLOPE[row["facet"]["train.weight_decay"]]
        assert abs(row["slope"] - want) < 0.1, (row["facet"], row["slope"])
        assert row["slope_se"] < 0.1
        assert list(row["m"]) == M


def test_scaling_slope_of_losses_unrelated_to_width_is_near_zero():
    """Chance: the same losses permuted across m fit slopes far from the laws."""
    got = [row["slope"] for seed in range(20) for _, row in slopes(scaling_run(seed, shuffle=True)).iterrows()]
    assert abs(np.median(got)) < 0.35
    assert np.mean([abs(s - (-1.0)) > 0.3 for s in got]) > 0.8


def test_scaling_needs_a_power_law_and_a_sweep_over_width():
    run = scaling_run(0)
    assert slopes(SimpleNamespace(pts=run.pts.drop(columns="data.density_exponent"), swept=run.swept)) is None
    assert slopes(SimpleNamespace(pts=run.pts, swept=["train.weight_decay"])) is None


def hadamard(m: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order m (a power of 2): ±1 entries, orthogonal rows."""
    H = np.ones((1, 1))
    while H.shape[0] < m:
        H = np.block([[H, H], [H, -H]])
    return H


def mutually_unbiased(m: int) -> np.ndarray:
    """n = 2m unit directions in m dimensions: the standard basis and the Hadamard basis, every
    cross overlap exactly 1/√m — a packing far better than random (a tight frame)."""
    return np.concatenate([np.eye(m), hadamard(m) / np.sqrt(m)], axis=1)


@pytest.mark.parametrize("m", [32, 64])
def test_a_good_packing_with_trained_noise_beats_random_directions(m):
    """Trained-like noise on a mutually unbiased packing: largest |cos| ≈ 1/√m plus noise, mean
    interference ≈ n/m − 1 = 1; random unit directions of the same norms: largest |cos| near the
    Johnson–Lindenstrauss scale √(2 ln n² / m), mean interference ≈ (n − 1)/m ≈ 2."""
    n = 2 * m
    for seed in range(3):
        W = trained_noise(mutually_unbiased(m), seed, sigma=0.02)
        good, chance = packing(W, 0.5), packing(random_like(W, seed), 0.5)
        assert good["max_overlap"] < 1 / np.sqrt(m) + 0.15
        assert chance["max_overlap"] > 0.6 * np.sqrt(2 * np.log(n * n) / m)
        assert good["max_overlap"] < 0.6 * chance["max_overlap"]
        assert good["mean_interference"] == pytest.approx(1.0, rel=0.2)
        assert chance["mean_interference"] == pytest.approx((n - 1) / m, rel=0.2)


def test_random_like_keeps_the_norms_and_draws_uniform_directions():
    W = trained_noise(mutually_unbiased(32), 0, sigma=0.02) * np.linspace(0.5, 1.5, 64)
    R = random_like(W, 7)
    np.testing.assert_allclose(np.linalg.norm(R, axis=0), np.linalg.norm(W, axis=0), rtol=1e-12)
    unit = R / np.linalg.norm(R, axis=0)
    cos = (unit.T @ unit)[np.triu_indices(64, 1)]
    assert abs(cos.mean()) < 0.02 and cos.std() == pytest.approx(1 / np.sqrt(32), rel=0.15)
    assert not np.allclose(R, random_like(W, 8))


def test_packing_of_fewer_than_two_learned_features_is_undefined():
    W = np.zeros((4, 10))
    W[0, 0] = 1.0
    assert np.isnan(packing(W, 0.5)["max_overlap"])


@pytest.mark.parametrize("m", [16, 32])
def test_welch_bounds_are_met_by_a_tight_frame_and_beaten_by_nothing(m):
    """Two mutually unbiased bases are a tight frame: mean crowding exactly at Welch's bound
    k/m − 1 = 1, largest overlap 1/√m within √2 of its bound; random directions and noisy
    copies never go below the bounds."""
    k = 2 * m
    bound = welch(k, m)
    exact = packing(mutually_unbiased(m), 0.5)
    assert exact["mean_crowding"] == pytest.approx(bound["welch_crowding"], rel=1e-9) == pytest.approx(1.0)
    assert bound["welch_overlap"] <= exact["max_overlap"] <= np.sqrt(2) * bound["welch_overlap"]
    for seed in range(5):
        for W in (trained_noise(mutually_unbiased(m), seed), random_like(mutually_unbiased(m), seed)):
            got = packing(W, 0.5)
            assert got["mean_crowding"] >= bound["welch_crowding"] - 1e-9
            assert got["max_overlap"] >= bound["welch_overlap"]
    assert welch(m, m) == {"welch_crowding": 0.0, "welch_overlap": 0.0}
