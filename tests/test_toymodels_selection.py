"""The selection loss: unbiased, precise where plain batches are noise, and it picks the truly best seed."""

import numpy as np
import pytest
import torch

import toymodels.selection as selection_module
from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, train
from toymodels.data import Structure
from toymodels.streams import stream_keys
from toymodels.selection import _plain, _stratified, selection


def trained(kind, n, m, steps=1000, seeds=2, l1=0.0, **data):
    points = [PointSpec(ModelConfig(kind, n, m, l1_penalty=l1), DataConfig(**data),
                        TrainConfig(steps=steps, selection_rows=1024, log_checkpoints=2, linear_checkpoints=1),
                        seed=s) for s in range(seeds)]
    r = train(points, compile=False)
    params = (torch.tensor(r.W), torch.tensor(r.W2), torch.tensor(r.b).unsqueeze(-1)) if kind == "abs" \
        else (torch.tensor(r.W), torch.tensor(r.b).unsqueeze(-1))
    l1_t = torch.full((seeds, 1, 1), float(l1)) if l1 else None
    keys, set_keys = stream_keys(points, "select")
    args = (kind, Structure.of(points[0]), params, torch.tensor(r.density), torch.tensor(r.importance).unsqueeze(-1),
            l1_t, keys, set_keys)
    return points, r, args


CASES = {
    "intro sparse (pairs integrated)": ("relu_out", 5, 2, dict(density=0.01, importance_decay=0.9), 0.0),
    "intro middle": ("relu_out", 5, 2, dict(density=0.2, importance_decay=0.9), 0.0),
    "phase n=3 m=2": ("relu_out", 3, 2, dict(density=0.1, extra_importance=2.0), 0.0),
    "relu_hidden": ("relu_hidden", 10, 5, dict(density=0.05, importance_decay=0.75), 0.0),
    "abs (signed values)": ("abs", 8, 4, dict(density=0.1, importance_decay=0.8), 0.0),
    "n=20 with L1 (pairs sampled)": ("relu_out", 20, 5, dict(density=0.03, importance_decay=0.7), 0.3),
    "mixed densities with p=1": ("relu_out", 4, 2, dict(density_values=[1.0, 0.3, 0.05, 0.01]), 0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stratified_estimate_agrees_with_plain_monte_carlo(case):
    """Against 2¹⁹ rows of the data distribution itself (a different estimator, same model)."""
    kind, n, m, data, l1 = CASES[case]
    _, _, args = trained(kind, n, m, l1=l1, **data)
    strat = _stratified(*args, blocks=32)
    plain = _plain(*args, blocks=512)
    z = (strat.loss - plain.loss) / torch.sqrt(strat.standard_error ** 2 + plain.standard_error ** 2)
    assert (z.abs() < 4).all(), (strat.loss, plain.loss, z)
    np.testing.assert_allclose(strat.penalty, plain.penalty, rtol=0.02, atol=1e-9)
    assert (strat.standard_error < plain.standard_error * 2).all()  # 16× fewer sampled rows, no worse


def test_sampled_single_feature_stratum_agrees_with_plain_monte_carlo(monkeypatch):
    """The branch for many features (K = 1 sampled, not integrated), exercised at small n."""
    monkeypatch.setattr(selection_module, "QUADRATURE_MAX_FEATURES", 4)
    _, _, args = trained("relu_out", 8, 3, density=0.04)
    strat = _stratified(*args, blocks=64)
    plain = _plain(*args, blocks=512)
    z = (strat.loss - plain.loss) / torch.sqrt(strat.standard_error ** 2 + plain.standard_error ** 2)
    assert (z.abs() < 4).all(), (strat.loss, plain.loss)


def test_standard_error_is_under_half_a_percent_at_density_001_and_honest():
    """The issue's bar: SE < 0.5 % of the loss at density 0.01 with the default rows; and the
    reported SE matches the spread of the estimate over independent evaluation seeds."""
    points, r, args = trained("relu_out", 5, 2, steps=3000, seeds=1, density=0.01, importance_decay=0.9)
    default = selection(*args, rows=TrainConfig().selection_rows)
    assert float(default.standard_error[0] / default.loss[0]) < 0.005
    # spread over 12 eval seeds with few rows, where the SE is large enough to check
    kind, structure, params, density, importance, l1, _, _ = args
    values, errors = [], []
    for eval_seed in range(12):
        pts = [PointSpec(p.model, p.data, TrainConfig(eval_seed=eval_seed), seed=p.seed) for p in points]
        keys, set_keys = stream_keys(pts, "select")
        est = selection(kind, structure, params, density, importance, l1, keys, set_keys, rows=2048)
        values.append(float(est.loss[0]))
        errors.append(float(est.standard_error[0]))
    spread, reported = np.std(values, ddof=1), np.mean(errors)
    assert 0.5 * reported < spread < 2.0 * reported


def test_the_selection_loss_picks_the_seed_that_is_truly_best():
    """Intro model at density 0.3, 6 seeds: the competing solutions differ by a few per cent,
    less than the noise of one 1,024-row batch. The selection loss must rank the seeds as their
    true expected loss does (2²⁰ fresh rows of another evaluation stream)."""
    points = [PointSpec(ModelConfig("relu_out", 5, 2), DataConfig(density=0.3, importance_decay=0.9),
                        TrainConfig(steps=3000, log_checkpoints=2, linear_checkpoints=1), seed=s) for s in range(6)]
    r = train(points, compile=False)
    params = (torch.tensor(r.W), torch.tensor(r.b).unsqueeze(-1))
    truth_pts = [PointSpec(p.model, p.data, TrainConfig(eval_seed=99), seed=p.seed) for p in points]
    keys, set_keys = stream_keys(truth_pts, "select")
    truth = _plain("relu_out", Structure.of(points[0]), params, torch.tensor(r.density),
                   torch.tensor(r.importance).unsqueeze(-1), None, keys, set_keys, blocks=1024).loss.numpy()
    chosen = int(np.argmin(r.selection_loss))
    assert truth[chosen] <= truth.min() * (1 + 1e-3), (r.selection_loss, truth)
    spread = (truth.max() - truth.min()) / truth.min()
    assert spread > 0.01, "the seeds must differ for this test to mean anything"
    np.testing.assert_allclose(r.selection_loss, truth, rtol=0.01)
