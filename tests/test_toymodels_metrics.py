"""Feature metrics on hand-built W with known answers (paper.md, Metrics)."""

import math

import numpy as np
import pytest
import torch

from toymodels import feature_metrics


def polygon(k: int) -> np.ndarray:
    """k unit vectors evenly spaced on a circle: W [2, k]."""
    a = 2 * math.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)])


def tetrahedron() -> np.ndarray:
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / math.sqrt(3)
    return v.T  # [3, 4]


@pytest.mark.parametrize("W, expected", [
    (np.array([[1.0, -1.0]]), [0.5, 0.5]),                        # antipodal pair
    (polygon(3), [2 / 3] * 3),                                    # triangle
    (polygon(5), [2 / 5] * 5),                                    # pentagon
    (tetrahedron(), [3 / 4] * 4),                                 # tetrahedron
    (np.eye(3), [1.0] * 3),                                       # orthogonal
])
def test_dimensionality_of_uniform_polytopes(W, expected):
    fm = feature_metrics(torch.tensor(W, dtype=torch.float64))
    np.testing.assert_allclose(fm["dimensionality"].numpy(), expected, atol=1e-9)
    m, k = W.shape
    # A uniform polytope of k vertices in d dimensions gives D_i = d/k and D* = m/‖W‖_F².
    np.testing.assert_allclose(fm["d_star"].item(), m / k, atol=1e-9)
    np.testing.assert_allclose(fm["dimensionality"].sum().item(), m, atol=1e-9)


def test_interference_and_norm():
    fm = feature_metrics(torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 2.0]]))
    np.testing.assert_allclose(fm["norm"].numpy(), [1, 1, 2], atol=1e-6)
    # Antipodal features interfere fully with each other; the orthogonal one not at all.
    np.testing.assert_allclose(fm["interference"].numpy(), [1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(fm["frob"].item(), 6.0, atol=1e-6)


def test_zero_and_tiny_columns_give_zero_not_nan():
    W = torch.tensor([[1.0, 0.0, 1e-5], [0.0, 0.0, 0.0]])
    fm = feature_metrics(W)
    d = fm["dimensionality"].numpy()
    assert not np.isnan(d).any() and not np.isnan(fm["interference"].numpy()).any()
    np.testing.assert_allclose(d, [1.0, 0.0, 0.0], atol=1e-6)


def test_batched_over_instances_matches_single():
    Ws = torch.stack([torch.tensor(polygon(5), dtype=torch.float32),
                      torch.tensor(np.concatenate([polygon(4), np.zeros((2, 1))], 1), dtype=torch.float32)])
    fm = feature_metrics(Ws)
    single = feature_metrics(Ws[1])
    np.testing.assert_allclose(fm["dimensionality"][1].numpy(), single["dimensionality"].numpy())
    np.testing.assert_allclose(fm["dimensionality"][1].numpy(), [0.5, 0.5, 0.5, 0.5, 0.0], atol=1e-6)


def test_many_features_use_the_gram_matrix_with_the_same_values(monkeypatch):
    """Above GRAM_ABOVE features the sums come from W Wᵀ (m×m), not the n×n dot products."""
    import toymodels.metrics as metrics_module

    W = np.random.default_rng(0).standard_normal((3, 4, 50)) * np.random.default_rng(1).uniform(0, 1, (3, 1, 50))
    W[:, :, 7] = 0.0                                                   # an unlearned column
    direct = metrics_module.feature_metrics(W)
    monkeypatch.setattr(metrics_module, "GRAM_ABOVE", 10)
    gram = metrics_module.feature_metrics(W)
    for key in direct:
        np.testing.assert_allclose(gram[key], direct[key], rtol=1e-9, atol=1e-12, err_msg=key)
    torch_gram = metrics_module.feature_metrics(torch.tensor(W, dtype=torch.float32))
    np.testing.assert_allclose(torch_gram["dimensionality"].numpy(), direct["dimensionality"], rtol=1e-4, atol=1e-6)
