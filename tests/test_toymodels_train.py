"""The trainer: exact gradients and optimiser, instance independence, divergence, schedules."""

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from toymodels import (DataConfig, ModelConfig, PointSpec, TrainConfig, checkpoint_steps, feature_metrics, loss,
                       lr_multiplier, pack_key, sample, train)
from toymodels.models import loss_and_grads
from toymodels import TrainState
from toymodels.trainer import init_params


def make(kind="relu_out", n=5, m=2, seed=0, steps=50, batch=64, lr=1e-3, l1=0.0, optimizer="adamw", **data):
    return PointSpec(ModelConfig(kind, n, m, l1_penalty=l1), DataConfig(**data),
                     TrainConfig(steps=steps, batch_size=batch, eval_batch_size=128, lr=lr, selection_rows=4096,
                                 optimizer=optimizer, log_checkpoints=5, linear_checkpoints=5), seed=seed)


@pytest.mark.parametrize("kind", ["linear", "relu_out", "relu_hidden", "abs"])
@pytest.mark.parametrize("l1", [0.0, 0.1])
def test_hand_gradients_match_autograd(kind, l1):
    torch.manual_seed(0)
    I, n, m, B = 3, 6, 3, 32
    W = torch.randn(I, m, n, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(I, n, m, dtype=torch.float64, requires_grad=True) if kind == "abs" else None
    b = (0.1 * torch.randn(I, n, dtype=torch.float64)).requires_grad_()
    x = torch.rand(I, B, n, dtype=torch.float64) * (torch.rand(I, B, n) < 0.5)
    if kind == "abs":
        x = 2 * x - 1
    imp = torch.rand(I, n, dtype=torch.float64)
    lam = torch.full((I,), l1, dtype=torch.float64)
    loss(kind, W, b, x, imp, W2, lam).sum().backward()
    params = (W, W2, b.unsqueeze(-1)) if kind == "abs" else (W, b.unsqueeze(-1))
    with torch.no_grad():
        rec, penalty, grads = loss_and_grads(kind, params, x.transpose(1, 2), imp.unsqueeze(-1),
                                             lam.view(I, 1, 1) if l1 else None)
        np.testing.assert_allclose((rec + penalty).numpy(), loss(kind, W, b, x, imp, W2, lam).detach().numpy())
    expected = [W.grad, W2.grad, b.grad] if kind == "abs" else [W.grad, b.grad]
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.reshape(e.shape), e)


@pytest.mark.parametrize("kind, optimizer", [("relu_out", "adamw"), ("abs", "adam"), ("relu_hidden", "adamw")])
def test_trainer_equals_autograd_and_torch_optim(kind, optimizer):
    """Our fused step = autograd + torch.optim on the very same batches."""
    pts = [make(kind, n=6, m=3, seed=s, steps=30, density=0.3, importance_decay=0.8, optimizer=optimizer,
                lr=1e-2) for s in range(3)]
    result = train(pts, compile=False)
    params = [p.clone().requires_grad_() for p in init_params(pts, torch.device("cpu"))]
    W, b = params[0], params[-1]
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=1e-2, weight_decay=0.01)
    imp = torch.tensor(0.8 ** np.arange(6), dtype=torch.float32).expand(3, 6)
    for t in range(30):
        x = sample(pts, t, 64)
        opt.zero_grad()
        loss(kind, W, b.squeeze(-1), x, imp, params[1] if kind == "abs" else None).sum().backward()
        opt.step()
    np.testing.assert_allclose(result.W, W.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(result.b, b.detach().squeeze(-1).numpy(), atol=2e-5)


def test_instance_alone_equals_instance_among_999_others():
    target = make(seed=123, steps=40, density=0.1, importance_decay=0.9)
    curves = {}

    def record(name):
        def cb(ck):
            curves.setdefault(name, []).append((ck.loss, ck.dimensionality))
        return cb

    alone = train([target], compile=False, callback=record("alone"))
    others = [make(seed=1000 + i, steps=40, density=float(d), importance_decay=0.9)
              for i, d in enumerate(np.linspace(0.05, 1.0, 999))]
    pack = others[:500] + [target] + others[500:]
    packed = train(pack, compile=False, callback=record("packed"))
    np.testing.assert_allclose(packed.W[500], alone.W[0], rtol=1e-5, atol=1e-6)
    loss_alone = np.array([c[0][0] for c in curves["alone"]])
    loss_packed = np.array([c[0][500] for c in curves["packed"]])
    np.testing.assert_allclose(loss_packed, loss_alone, rtol=1e-5)
    assert loss_alone[-1] < loss_alone[0]
    np.testing.assert_allclose(packed.selection_loss[500], alone.selection_loss[0], rtol=1e-6)
    np.testing.assert_allclose(packed.selection_se[500], alone.selection_se[0], rtol=1e-4)


def test_initial_scale_is_per_instance_xavier():
    for count in (1, 200):
        pts = [make(n=40, m=10, seed=s) for s in range(count)]
        W = init_params(pts, torch.device("cpu"))[0]
        assert abs(W.std().item() - math.sqrt(2 / 50)) < 0.02
        np.testing.assert_array_equal(W[0].numpy(), init_params(pts[:1], torch.device("cpu"))[0][0].numpy())


def test_diverged_instance_is_frozen_and_others_unaffected():
    good = [make(seed=s, steps=30) for s in range(3)]
    bad = make(seed=9, steps=30, lr=1e38)
    ref = train(good, compile=False)
    res = train(good[:1] + [bad] + good[1:], compile=False)
    assert res.diverged_step[1] >= 0 and (res.diverged_step[[0, 2, 3]] == -1).all()
    assert res.final.diverged.tolist() == [False, True, False, False]
    assert np.isfinite(res.W).all() and np.isfinite(res.final.loss).all()
    np.testing.assert_allclose(res.W[[0, 2, 3]], ref.W, atol=1e-6)
    assert res.final.lr[1] == 0


def test_checkpoints_and_schedules():
    cfg = TrainConfig(steps=10_000, log_checkpoints=30, linear_checkpoints=20)
    steps = checkpoint_steps(cfg)
    assert steps[0] == 0 and steps[-1] == 10_000 and steps == sorted(set(steps))
    assert {1, 2, 3}.issubset(steps) and {5000, 9500}.issubset(steps)    # log early, linear late
    seen = []
    train([make(steps=20)], compile=False, callback=lambda ck: seen.append((ck.step, ck.final)))
    assert [s for s, _ in seen] == checkpoint_steps(make(steps=20).train) and seen[-1] == (20, True)
    lin = TrainConfig(steps=100, schedule="linear", warmup_steps=10)
    cos = TrainConfig(steps=100, schedule="cosine")
    assert lr_multiplier(lin, 0) == pytest.approx(0.1) and lr_multiplier(lin, 10) == pytest.approx(1.0)
    assert lr_multiplier(lin, 100) == pytest.approx(0.0) and lr_multiplier(cos, 50) == pytest.approx(0.5)
    assert lr_multiplier(TrainConfig(steps=100), 99) == 1.0


def test_per_instance_lr_and_pack_key():
    a, b = make(lr=1e-3), make(lr=1e-2, seed=1, density=0.5)
    assert pack_key(a) == pack_key(b)
    assert pack_key(a) != pack_key(make(n=6))
    ck = train([a, b], compile=False).final
    np.testing.assert_allclose(ck.lr, [1e-3, 1e-2], rtol=1e-6)
    with pytest.raises(ValueError, match="pack_key"):
        train([a, make(n=6)], compile=False)


def test_deterministic_on_cpu():
    pts = [make(seed=s, steps=25, density=0.2) for s in range(4)]
    r1, r2 = train(pts, compile=False), train(pts, compile=False)
    np.testing.assert_array_equal(r1.W, r2.W)


def test_compiled_matches_eager():
    """Compiled and run in blocks of 2 on parallel threads (toymodels/sizing.py) = eager in one block."""
    pts = [make(seed=s, steps=30, density=0.2, n=8, m=3) for s in range(4)]
    eager = train(pts, compile=False)
    compiled = train(pts, compile=True, block=2)
    assert compiled.compiled
    np.testing.assert_array_equal(train(pts, compile=True, block=2).W, compiled.W)   # deterministic
    np.testing.assert_allclose(compiled.W, eager.W, atol=1e-4)
    np.testing.assert_allclose(compiled.final.loss, eager.final.loss, rtol=1e-3)


def assert_same_checkpoints(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert (x is None) == (y is None), field.name
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=f"step {a.step}: {field.name}")


class Preempted(Exception):
    pass


@pytest.mark.parametrize("compile", [False, True])
def test_interrupted_then_resumed_equals_uninterrupted(compile):
    """Stopped after its third saved state, pickled, resumed: the same result bit for bit (2 blocks
    of 2, the last padded; one instance diverged before the interruption and stays frozen)."""
    pts = [make(seed=s, steps=30, density=0.2, n=8, m=3, lr=1e-2 if s < 2 else 1e38) for s in range(3)]
    whole = train(pts, compile=compile, block=2)
    saved = []

    def save(state):
        saved.append(pickle.dumps(state))
        if len(saved) == 3:
            raise Preempted

    with pytest.raises(Preempted):
        train(pts, compile=compile, block=2, on_state=save, state_every_s=0)
    state = pickle.loads(saved[-1])
    assert isinstance(state, TrainState) and 0 < state.step < 30 and state.params["W"].shape == (3, 3, 8)
    assert state.optim["diverged_step"][2] >= 0 and [ck.step for ck in state.history][-1] == state.step - 1
    seen = []
    resumed = train(pts, compile=compile, block=2, resume=state, callback=seen.append)
    assert [ck.step for ck in seen] == [c for c in checkpoint_steps(pts[0].train) if c >= state.step]
    assert_same_checkpoints(resumed.history, whole.history)
    assert_same_checkpoints([resumed.final], [whole.final])
    for name in ("W", "b", "diverged_step", "selection_loss", "selection_reconstruction", "selection_se"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)
    if not compile:   # a state is only for its own points; saved rarely when asked to
        with pytest.raises(ValueError, match="other points"):
            train(pts[::-1], compile=False, block=2, resume=state)
        calls = []
        train(pts, compile=False, on_state=calls.append, state_every_s=3600)
        assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    pts = [make(seed=s, steps=30, density=0.2) for s in range(4)]
    cpu, gpu = train(pts, compile=False), train(pts, device="cuda", compile=False)
    np.testing.assert_allclose(gpu.W, cpu.W, atol=1e-4)


def test_checkpoints_carry_the_weights_and_the_objectives_parts():
    pts = [make(kind, n=6, m=3, seed=s, steps=40, density=0.3, l1=l1) for kind, s, l1 in
           (("relu_out", 0, 0.0), ("relu_out", 1, 0.5))]
    seen = []
    result = train(pts, compile=False, callback=seen.append)
    first, last = seen[0], seen[-1]
    np.testing.assert_array_equal(first.W, init_params(pts, torch.device("cpu"))[0].numpy())
    np.testing.assert_array_equal(last.W, result.W)
    np.testing.assert_array_equal(last.b, result.b)
    assert last.W2 is None
    for ck in seen:  # the stored metrics are those of the stored weights
        np.testing.assert_allclose(ck.dimensionality, feature_metrics(ck.W)["dimensionality"], rtol=1e-5)
        np.testing.assert_allclose(ck.loss, ck.reconstruction + ck.penalty, rtol=1e-6)
    assert (last.penalty[0] == 0) and last.penalty[1] > 0          # the L1 part is reported
    # the held-out objective equals the autograd definition on the held-out batch (eval_seed's rows)
    x = sample(pts, 0, 128, stream="eval")
    expected = loss("relu_out", torch.tensor(last.W), torch.tensor(last.b), x,
                    torch.ones(2, 6), l1_penalty=torch.tensor([0.0, 0.5]))
    np.testing.assert_allclose(last.loss, expected.numpy(), rtol=1e-5)
    abs_pts = [make("abs", n=6, m=3, seed=0, steps=10)]
    abs_seen = []
    abs_result = train(abs_pts, compile=False, callback=abs_seen.append)
    np.testing.assert_array_equal(abs_seen[-1].W2, abs_result.W2)
