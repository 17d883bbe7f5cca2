"""Moments and structure of the generated data, and its independence from packing."""

import numpy as np
import pytest

from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, sample

BATCH = 8192


def point(n=10, kind="relu_out", seed=0, **data):
    return PointSpec(ModelConfig(kind, n, 2), DataConfig(**data), seed=seed)


def five_sigma(p, n=BATCH):
    """Five binomial standard deviations of a frequency p estimated from n draws."""
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-9


def draw(points, step=0, batch=BATCH, stream="train"):
    return sample(points, step, batch, stream=stream).numpy()


@pytest.mark.parametrize("p", [1.0, 0.3, 0.05])
def test_independent_features_density_and_values(p):
    x = draw([point(density=p, seed=s) for s in range(4)])        # [4, B, 10]
    nz = x[x != 0]
    n = x.size
    assert abs((x != 0).mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-6
    # Nonzero values are Uniform[0, 1]: mean 1/2, variance 1/12, flat quantiles.
    assert abs(nz.mean() - 0.5) < 0.01 and abs(nz.var() - 1 / 12) < 0.005
    np.testing.assert_allclose(np.quantile(nz, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.02)
    assert nz.min() >= 0 and nz.max() < 1
    # Features are independent of each other.
    c = np.corrcoef(x.reshape(-1, 10).T)
    assert np.abs(c[~np.eye(10, dtype=bool)]).max() < 0.05


def test_abs_values_are_uniform_on_minus_one_one():
    x = draw([point(kind="abs", density=0.5)])
    nz = x[x != 0]
    assert abs((x != 0).mean() - 0.5) < 0.01
    assert abs(nz.mean()) < 0.02 and abs(np.abs(nz).mean() - 0.5) < 0.01 and nz.min() >= -1 and nz.max() <= 1


def test_extra_density_and_explicit_vectors():
    x = draw([point(n=4, density=0.4, extra_density=0.25)])[0]
    np.testing.assert_allclose((x != 0).mean(0), [0.4, 0.4, 0.4, 0.1], atol=five_sigma(0.4))
    x = draw([point(n=3, density_values=[1.0, 0.5, 0.0])])[0]
    np.testing.assert_allclose((x != 0).mean(0), [1.0, 0.5, 0.0], atol=five_sigma(0.5))


def test_correlated_sets_share_on_off_with_independent_values():
    x = draw([point(n=5, density=0.3, correlation="correlated", n_sets=2, set_size=2)])[0]
    on = x != 0
    assert (on[:, 0] == on[:, 1]).all() and (on[:, 2] == on[:, 3]).all()
    assert abs(on[:, 0].mean() - 0.3) < five_sigma(0.3) and abs(on[:, 4].mean() - 0.3) < five_sigma(0.3)
    both = on[:, 0]
    assert abs(np.corrcoef(x[both, 0], x[both, 1])[0, 1]) < 0.06       # values independent
    assert abs(np.corrcoef(on[:, 0], on[:, 2])[0, 1]) < 0.05            # sets independent


@pytest.mark.parametrize("marginal", [False, True])
def test_anticorrelated_sets_have_one_active_member(marginal):
    p, k = 0.3, 3
    x = draw([point(n=6, density=p, correlation="anticorrelated", n_sets=2, set_size=k,
                    anticorrelated_marginal=marginal)])[0]
    on = x != 0
    assert on[:, :3].sum(1).max() == 1 and on[:, 3:6].sum(1).max() == 1
    q = min(1.0, k * p) if marginal else p
    assert abs(on[:, :3].any(1).mean() - q) < five_sigma(q)             # set active w.p. q
    np.testing.assert_allclose(on[:, :3].mean(0), [q / k] * 3, atol=five_sigma(q / k))  # uniform choice
    nz = x[:, :3][on[:, :3]]
    assert abs(nz.mean() - 0.5) < 0.02


def test_stream_depends_on_seed_and_step_only():
    a = point(density=0.2, seed=7)
    alone = draw([a], step=3)[0]
    packed = draw([point(density=0.9, seed=1), a, point(density=0.05, seed=2)], step=3)[1]
    np.testing.assert_array_equal(alone, packed)
    assert not np.array_equal(alone, draw([a], step=4)[0])
    assert not np.array_equal(alone, draw([point(density=0.2, seed=8)], step=3)[0])


def test_evaluation_rows_are_shared_by_every_seed_and_keyed_by_eval_seed():
    seeds = [point(density=0.2, seed=s) for s in range(3)]
    held_out = draw(seeds, stream="eval")
    np.testing.assert_array_equal(held_out[0], held_out[1])           # common random numbers
    np.testing.assert_array_equal(held_out[0], held_out[2])
    assert not np.array_equal(held_out[0], draw(seeds[:1], step=0)[0])  # not a training batch
    np.testing.assert_array_equal(held_out[0], draw(seeds[:1], step=5, stream="eval")[0])  # fixed
    other = PointSpec(ModelConfig("relu_out", 10, 2), DataConfig(density=0.2), TrainConfig(eval_seed=1))
    assert not np.array_equal(held_out[0], draw([other], stream="eval")[0])
    select = draw(seeds[:1], step=0, stream="select")[0]
    assert not np.array_equal(select, held_out[0]) and not np.array_equal(select, draw(seeds[:1], step=1, stream="select")[0])


@pytest.mark.parametrize("n, batch", [(256, 1024), (400, 1024), (10_000, 1024)])
def test_the_stream_never_repeats(n, batch):
    """A 32-bit counter over (step, feature, row) wrapped after 2³²/(n·batch) steps (16,384 for
    n=256, B=1024; 10,486 for E5's n=400; 419 for n=10⁴) and replayed the same batches."""
    p = point(n=n, density=1.0, seed=3)
    wrap = (1 << 32) // (n * batch)
    steps = [0, 1, wrap, 2 * wrap, wrap + 1, 1 << 20, (1 << 31) - 1]
    batches = [draw([p], step=t, batch=batch)[0] for t in steps]
    for i in range(len(steps)):
        for j in range(i + 1, len(steps)):
            same = np.mean(batches[i] == batches[j])
            assert same < 1e-4, f"steps {steps[i]} and {steps[j]} share {same:.2%} of their values"
