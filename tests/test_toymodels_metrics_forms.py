"""One feature_metrics definition: its numpy and torch forms agree, the threshold included."""

import numpy as np
import pytest
import torch

from analysis.geometry import feature_metrics as analysis_metrics
from toymodels.metrics import NORM_THRESHOLD, feature_metrics


def _weights(seed: int) -> np.ndarray:
    """W [instances, m, n] with dead columns, columns exactly at the threshold, and tiny ones."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(6, 3, 7))
    W[:, :, 1] = 0.0
    W[0, :, 2] = [NORM_THRESHOLD, 0.0, 0.0]            # exactly at the threshold: learned
    W[1, :, 2] = [NORM_THRESHOLD * 0.999, 0.0, 0.0]    # just below: not learned
    W[2, :, 3] *= 1e-6
    return W


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_and_torch_forms_agree(seed):
    W = _weights(seed)
    numpy_out = feature_metrics(W)
    torch_out = feature_metrics(torch.tensor(W, dtype=torch.float64))
    assert set(numpy_out) == set(torch_out) == {"norm", "interference", "dimensionality", "frob", "d_star"}
    for key in numpy_out:
        assert isinstance(numpy_out[key], np.ndarray) and isinstance(torch_out[key], torch.Tensor)
        np.testing.assert_allclose(numpy_out[key], torch_out[key].numpy(), rtol=1e-12, atol=1e-15, err_msg=key)
    # float32 tensors (the trainer's) agree to float32 precision
    f32 = feature_metrics(torch.tensor(W, dtype=torch.float32))
    for key in numpy_out:
        np.testing.assert_allclose(numpy_out[key], f32[key].double().numpy(), rtol=2e-5, atol=1e-6, err_msg=key)
    # the analysis uses the same definition, one model at a time
    for i in range(len(W)):
        norm, interference, dim = analysis_metrics(W[i])
        np.testing.assert_array_equal(norm, numpy_out["norm"][i])
        np.testing.assert_array_equal(interference, numpy_out["interference"][i])
        np.testing.assert_array_equal(dim, numpy_out["dimensionality"][i])


def test_the_threshold_is_inclusive_in_both_forms():
    W = _weights(0)
    for out in (feature_metrics(W), feature_metrics(torch.tensor(W))):
        dim = np.asarray(out["dimensionality"])
        assert dim[0, 2] > 0, "‖W_i‖ == threshold counts as learned"
        assert dim[1, 2] == 0 and np.asarray(out["interference"])[1, 2] == 0, "below it does not"
        assert (dim[:, 1] == 0).all()
