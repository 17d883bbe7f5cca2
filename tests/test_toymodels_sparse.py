"""Sparse inputs (toymodels/sparse.py), frequency and importance laws, unit-norm inputs, finite datasets."""

import numpy as np
import pytest
import torch

from toymodels import (DataConfig, ModelConfig, PointSpec, TrainConfig, density_vector, feature_metrics, importance_vector,
                       loss, sample, train)
from toymodels.data import Structure, sparse_inputs
from toymodels.models import loss_and_grads
from toymodels.sparse import UNROLL_HIDDEN, row_objective_and_grads, search
from toymodels.streams import densities, draw_rows, stream_keys

ROWS = 16_384


def point(n=300, m=8, kind="relu_out", seed=0, inputs="sparse", steps=100, batch=256, lr=1e-3, **data):
    return PointSpec(ModelConfig(kind, n, m), DataConfig(**data),
                     TrainConfig(steps=steps, batch_size=batch, inputs=inputs, selection_rows=8192, lr=lr,
                                 log_checkpoints=2, linear_checkpoints=2), seed=seed)


def draw(points, step=0, rows=ROWS, stream="train"):
    return sample(points, step, rows, stream=stream).numpy()


def test_sparse_rows_have_the_dense_distribution():
    """Per-feature frequencies p_i (a power law from 0.2 down to 0.002), Uniform[0, 1) values and
    independent features — as the dense generator's rows, which are checked the same way."""
    data = dict(density=0.2, density_exponent=1.0, density_min=0.002)
    p = density_vector(ModelConfig("relu_out", 300, 8), DataConfig(**data))
    for inputs in ("sparse", "dense"):
        x = draw([point(inputs=inputs, **data)])[0]                          # [rows, n]
        on = x != 0
        z = (on.mean(0) - p) / np.sqrt(p * (1 - p) / ROWS)
        assert np.abs(z).max() < 5 and abs(z.mean()) < 5 / np.sqrt(300), inputs
        nz = x[on]
        assert abs(nz.mean() - 0.5) < 0.01 and abs(nz.var() - 1 / 12) < 0.005 and 0 <= nz.min() and nz.max() < 1
        # independence: co-activation of the most frequent pairs is p_i·p_j
        both = (on[:, :10, None] & on[:, None, :10]).mean(0)
        expect = np.outer(p[:10], p[:10])
        off = ~np.eye(10, dtype=bool)
        assert (np.abs(both - expect)[off] < 5 * np.sqrt(expect * (1 - expect) / ROWS)[off] + 1e-4).all(), inputs
    # active features per row: mean Σ p_i and the variance of a sum of independent Bernoullis
    k = (draw([point(**data)]) != 0).sum(-1)
    assert abs(k.mean() - p.sum()) < 5 * np.sqrt((p * (1 - p)).sum() / k.size)
    assert abs(k.var() / (p * (1 - p)).sum() - 1) < 0.1


def test_sparse_signed_values_for_abs_and_unit_norm_rows():
    x = draw([point(kind="abs", density=0.05)])[0]
    nz = x[x != 0]
    assert abs(nz.mean()) < 0.01 and abs(np.abs(nz).mean() - 0.5) < 0.01 and -1 <= nz.min() and nz.max() < 1
    for inputs in ("sparse", "dense"):
        x = draw([point(inputs=inputs, density=0.02, normalize=True)])[0]
        norms = np.linalg.norm(x, axis=1)
        np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
        assert abs((norms == 0).mean() - (0.98 ** 300)) < 0.01                 # empty rows stay empty


def test_sparse_stream_depends_on_seed_and_step_only_and_never_repeats():
    a = point(density=0.01, seed=7)
    alone = draw([a], step=3, rows=1024)[0]
    packed = draw([point(density=0.3, seed=1), a, point(density=0.001, seed=2)], step=3, rows=1024)[1]
    np.testing.assert_array_equal(alone, packed)        # other instances need more slots: no matter
    steps = [0, 1, 1 << 20, (1 << 31) - 1]
    batches = [draw([a], step=t, rows=1024)[0] for t in steps]
    for i in range(len(steps)):
        for j in range(i + 1, len(steps)):
            assert np.mean((batches[i] != 0) & (batches[i] == batches[j])) < 1e-4
    assert not np.array_equal(alone, draw([point(density=0.01, seed=8)], step=3, rows=1024)[0])


@pytest.mark.parametrize("m", [UNROLL_HIDDEN, UNROLL_HIDDEN + 3])
@pytest.mark.parametrize("kind", ["linear", "relu_out", "relu_hidden", "abs"])
def test_sparse_objective_and_gradients_equal_the_dense_ones(kind, m):
    """On the same rows, the sparse step (input side from the active features, output side as
    zero-target terms plus corrections at them) gives the dense step's numbers — with the output
    side's products unrolled (small m) and as matrix products."""
    torch.manual_seed(0)
    I, n, R = 3, 40, 64
    pts = [point(n=n, m=m, kind=kind, seed=s, density=0.05) for s in range(I)]
    feat, val = draw_rows(Structure.of(pts[0]), *stream_keys(pts, "train"), 5, R, densities(pts))
    X = sample(pts, 5, R).transpose(1, 2).contiguous()                      # the same rows, dense [I, n, R]
    W = torch.randn(I, m, n, dtype=torch.float64)
    params = (W, torch.randn(I, n, m, dtype=torch.float64), 0.1 * torch.randn(I, n, 1, dtype=torch.float64)) \
        if kind == "abs" else (W, 0.1 * torch.randn(I, n, 1, dtype=torch.float64))
    imp, l1 = torch.rand(I, n, 1, dtype=torch.float64), torch.full((I, 1, 1), 0.2, dtype=torch.float64)
    rec, pen, grads = loss_and_grads(kind, params, X.double(), imp, l1)
    srec, spen, sgrads = row_objective_and_grads(kind, params, feat, val.double(), imp, l1, R)
    torch.testing.assert_close(srec.sum(1), rec)
    torch.testing.assert_close(spen.sum(1), pen)
    for g, s in zip(grads, sgrads):
        torch.testing.assert_close(s, g)


def test_search_is_searchsorted():
    """The sampler's branchless search returns ``searchsorted(right=True)``, ties and ends included."""
    torch.manual_seed(0)
    for L in (1, 2, 39, 1000, 1024):
        p = torch.rand(3, L, dtype=torch.float64) ** 4
        p[:, 1::7] = 0.0                                                     # repeated cdf values
        cdf = torch.cumsum(p, dim=1) / p.sum(dim=1, keepdim=True)
        u = torch.cat([torch.rand(3, 500, dtype=torch.float64), cdf, torch.zeros(3, 1, dtype=torch.float64),
                       torch.full((3, 1), 1.5, dtype=torch.float64)], dim=1)
        torch.testing.assert_close(search(cdf, u), torch.searchsorted(cdf, u, right=True), rtol=0, atol=0)


def test_sparse_and_dense_training_reach_the_same_loss():
    """n=300, m=8, density 0.01: the two paths draw different rows from one distribution, so the
    models they train score alike on one shared evaluation set (to the seed-to-seed spread)."""
    pts = {inputs: [point(inputs=inputs, seed=s, steps=600, batch=128, density=0.01, importance_decay=0.99,
                          lr=3e-3) for s in range(3)] for inputs in ("dense", "sparse")}
    dense, sparse = train(pts["dense"], compile=False), train(pts["sparse"], compile=False)
    assert not sparse_inputs(pts["dense"][0]) and sparse_inputs(pts["sparse"][0])
    X = torch.tensor(draw(pts["dense"][:1] * 3, rows=32_768, stream="select"))     # the same rows for all six
    imp = torch.tensor(dense.importance)

    def scored(r):
        return loss("relu_out", torch.tensor(r.W), torch.tensor(r.b), X, imp).numpy()

    d, s = scored(dense), scored(sparse)
    start = dense.history[0].loss.mean()
    assert d.mean() < 0.85 * start and s.mean() < 0.85 * start                    # both learned
    spread = max(d.std(), s.std())
    assert abs(d.mean() - s.mean()) < 3 * spread + 0.01 * d.mean(), (d, s, start)


def test_auto_rule_and_laws():
    base = dict(n=1000, inputs="auto")
    assert sparse_inputs(point(density=0.005, **base)) and not sparse_inputs(point(density=0.05, **base))
    assert not sparse_inputs(point(n=100, m=5, density=0.001, inputs="auto"))           # too few features
    assert not sparse_inputs(point(density=0.001, correlation="correlated", n_sets=2, set_size=2, **base))
    p = density_vector(ModelConfig("relu_out", 5, 2), DataConfig(density=0.5, density_exponent=1.0, density_min=0.15))
    np.testing.assert_allclose(p, [0.5, 0.25, 0.5 / 3, 0.15, 0.15])
    imp = importance_vector(ModelConfig("relu_out", 4, 2), DataConfig(importance_decay=1.0, importance_exponent=2.0))
    np.testing.assert_allclose(imp, [1, 1 / 4, 1 / 9, 1 / 16])
    with pytest.raises(ValueError, match="sparse inputs need independent features"):
        point(density=0.01, inputs="sparse", correlation="correlated", n_sets=2, set_size=2)
    with pytest.raises(ValueError, match="data.density_exponent"):
        DataConfig(density_exponent=-1.0)


@pytest.mark.parametrize("inputs", ["dense", "sparse"])
def test_finite_dataset_is_the_training_batch_and_carries_datapoint_dimensionality(inputs):
    """T fixed rows are every step's batch: the step's training objective is the dataset's, the
    checkpoints carry D_t of the training points' hidden vectors, the held-out loss stays on fresh rows."""
    T = 24
    pts = [point(n=300, m=4, inputs=inputs, seed=s, steps=60, density=0.01, dataset_size=T) for s in range(2)]
    seen = []
    result = train(pts, compile=False, callback=seen.append)
    X = torch.tensor(draw(pts, rows=T, stream="dataset"))                          # [I, T, n]
    np.testing.assert_array_equal(X[0].numpy(), draw(pts[:1], rows=T, stream="dataset")[0])
    for ck in (seen[0], seen[-1]):
        h = torch.einsum("itn,imn->imt", X, torch.tensor(ck.W))                   # hidden vectors [I, m, T]
        expected = feature_metrics(h)
        np.testing.assert_allclose(ck.data_dimensionality, expected["dimensionality"].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ck.data_norm, expected["norm"].numpy(), rtol=1e-4, atol=1e-7)
    final = seen[-1]
    on_data = loss("relu_out", torch.tensor(final.W), torch.tensor(final.b), X, torch.ones(2, 300))
    np.testing.assert_allclose(final.train_loss, on_data.numpy(), rtol=1e-4)
    assert (final.train_loss < final.loss).all()                  # fit to its own rows, worse on fresh ones
    assert result.final.data_dimensionality.shape == (2, T)
