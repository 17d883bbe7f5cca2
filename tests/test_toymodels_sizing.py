"""Blocks of instances (any block size trains the same models) and the pack size a sweep chooses."""

import numpy as np
import pytest
import torch

from toymodels import DataConfig, ModelConfig, PointSpec, TrainConfig, checkpoint_steps, train
from toymodels.sizing import (BLOCK_BYTES, MAX_TRIALS, MIN_BLOCK_EAGER, block_size, choose_pack_size, even_blocks,
                              point_bytes, step_bytes)


def make(seed, n=6, m=3, steps=40, density=0.2, lr=1e-2):
    return PointSpec(ModelConfig("relu_out", n, m), DataConfig(density=density, importance_decay=0.9),
                     TrainConfig(steps=steps, batch_size=64, eval_batch_size=128, lr=lr, selection_rows=1024,
                                 log_checkpoints=3, linear_checkpoints=2), seed=seed)


def test_blocks_and_their_padding_train_the_same_models():
    """7 points in blocks of 3 (the last padded with copies of the last point) = one block of 7."""
    pts = [make(s, density=d) for s, d in zip(range(7), np.linspace(0.05, 0.5, 7))]
    curves = {}
    whole = train(pts, compile=False, block=7, callback=lambda ck: curves.setdefault("whole", []).append(ck.loss))
    blocked = train(pts, compile=False, block=3, callback=lambda ck: curves.setdefault("blocked", []).append(ck.loss))
    np.testing.assert_allclose(blocked.W, whole.W, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.array(curves["blocked"]), np.array(curves["whole"]), rtol=1e-6)
    np.testing.assert_allclose(blocked.selection_loss, whole.selection_loss, rtol=1e-6)
    assert blocked.W.shape == (7, 3, 6) and blocked.final.loss.shape == (7,)


def test_block_sizes():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    per = step_bytes("relu_out", 20, 5, 1024)
    assert per == 4 * 1024 * 65
    assert block_size(1000, per, cpu, compiled=True, threads=2) == BLOCK_BYTES // per
    assert block_size(10, per, cpu, compiled=True, threads=1) == 10           # never more than the pack
    assert block_size(10, per, cpu, compiled=True, threads=2) == 5            # every thread gets a block
    assert block_size(1000, per, cpu, compiled=False) == MIN_BLOCK_EAGER      # eager: few large blocks
    assert block_size(1000, per, gpu, compiled=True) == 1000                  # a GPU takes the pack at once
    assert block_size(5, step_bytes("relu_out", 10_000, 100, 1024), cpu, compiled=True, threads=1) == 1
    for instances, block in ((1000, 61), (7, 3), (64, 64), (65, 64)):
        count, size = even_blocks(instances, block)
        assert size <= block and 0 <= count * size - instances < count


def test_pack_size_balances_workers_within_memory_and_duration():
    small = PointSpec(ModelConfig("relu_out", 20, 5), train=TrainConfig(steps=10_000))
    # a small sweep: one trial per worker
    choice = choose_pack_size(small, 100, 2)
    assert (choice.size, choice.trials) == (50, 2) and "one trial per worker" in choice.reason
    # a large one: trials capped in duration, in whole waves of the workers
    big = choose_pack_size(small, 20_000, 2)
    assert big.trials % 2 == 0 and big.size * big.trials >= 20_000 and "min of training" in big.reason
    assert big.size < 10_000
    # memory binds when a worker's share is small
    per_point = point_bytes("relu_out", 20, 5, 1024, len(checkpoint_steps(small.train)), False)
    tight = choose_pack_size(small, 20_000, 2, memory_bytes=200 * per_point)
    assert tight.size == 50 and tight.trials == 400 and "memory" in tight.reason
    # models that train slowly are not split into more than MAX_TRIALS trials
    slow = PointSpec(ModelConfig("relu_out", 400, 30), train=TrainConfig(steps=10_000))
    many = choose_pack_size(slow, 20_000, 2)
    assert many.trials <= MAX_TRIALS and f"at most {MAX_TRIALS} trials" in many.reason
    # a GPU holds the step's activations of the whole pack too
    assert point_bytes("relu_out", 20, 5, 1024, 51, True) > point_bytes("relu_out", 20, 5, 1024, 51, False)
    with pytest.raises(ValueError, match="workers"):
        choose_pack_size(small, 10, 0)
