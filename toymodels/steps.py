"""What the trainer runs on one block of instances: the training step and the objectives.

Every function takes a block's ``consts`` = (lr, weight_decay, keys, set_keys, density,
importance, l1, data): lr, weight_decay and l1 [I, 1, 1], keys and set_keys int32 [I, 2, 1, 1]
(toymodels/streams.py), density and importance [I, n, 1], and ``data`` what the step reads
instead of a stream when there is one — () for a fresh dense batch, (X [I, n, T],) for a dense
finite dataset, the sampler's tables (count_cdf, cap, feature_cdf) for fresh sparse rows, and
(feat, val) [I, T, K] for a sparse finite dataset (toymodels/sparse.py). A block's ``state`` is
(params, m, v, active [I] bool, diverged_step [I] int32).

:func:`build_step` returns step(state, sched, step_t, consts) → (state, reconstruction [I],
penalty [I]), where sched = float32 [2] holds Adam's step count t+1 and the lr multiplier, and
step_t is the int32 step index. Dense inputs: one fused function (batch, forward, hand-derived
backward, update), compiled as a whole. Sparse inputs: a compiled function per chunk of rows
accumulates the objective and gradients, then a compiled update applies them.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .compiled import maybe_compiled
from .config import TrainConfig
from .data import Structure, feature_batch
from .models import loss_and_grads
from .sparse import chunk_rows, draw, row_objective_and_grads


def make_update(cfg: TrainConfig) -> Callable:
    """Adam/AdamW on a block: update(state, grads, rec, penalty, sched, step_t, lr, wd) → state.

    An instance whose objective or updated weights are not finite keeps its weights, is marked
    inactive (lr 0 from then on) and gets ``step_t`` as its divergence step.
    """
    beta1, beta2, eps = cfg.beta1, cfg.beta2, cfg.eps
    decoupled = cfg.optimizer == "adamw"

    def update(state, grads, rec, penalty, sched, step_t, lr_base, wd):
        params, m, v, active, diverged = state
        t, lr = sched[0], lr_base * (sched[1] * active.view(-1, 1, 1))
        bc1 = 1.0 - beta1 ** t
        bc2 = torch.sqrt(1.0 - beta2 ** t)
        new_p, new_m, new_v = [], [], []
        finite = torch.isfinite(rec + penalty)
        for P, G, M, V in zip(params, grads, m, v):
            if not decoupled:
                G = G + wd * P
            M = beta1 * M + (1.0 - beta1) * G
            V = beta2 * V + (1.0 - beta2) * G * G
            P2 = P * (1.0 - lr * wd) if decoupled else P
            P2 = P2 - (lr / bc1) * M / (torch.sqrt(V) / bc2 + eps)
            finite = finite & torch.isfinite(P2).flatten(1).all(dim=1)
            new_p.append(P2), new_m.append(M), new_v.append(V)
        keep = finite.view(-1, 1, 1)
        new_p = tuple(torch.where(keep, a, b) for a, b in zip(new_p, params))
        new_m = tuple(torch.where(keep, a, b) for a, b in zip(new_m, m))
        new_v = tuple(torch.where(keep, a, b) for a, b in zip(new_v, v))
        diverged = torch.where(active & ~finite, step_t, diverged)
        return new_p, new_m, new_v, active & finite, diverged

    return update


def make_dense_step(kind: str, structure: Structure, cfg: TrainConfig, l1_on: bool) -> Callable:
    """The fused step on dense inputs: a fresh batch of ``train.batch_size`` rows, or the dataset."""
    update = make_update(cfg)

    def step(state, sched, step_t, consts):
        lr_base, wd, keys, set_keys, density, importance, l1, data = consts
        X = data[0] if structure.dataset_size else feature_batch(structure, keys, set_keys, step_t, density,
                                                                  cfg.batch_size)
        rec, penalty, grads = loss_and_grads(kind, state[0], X, importance, l1 if l1_on else None)
        return update(state, grads, rec, penalty, sched, step_t, lr_base, wd), rec, penalty

    return step


def make_dense_objective(kind: str, structure: Structure, rows: int, l1_on: bool) -> Callable:
    """objective(params, step_t, consts) → (reconstruction [I], penalty [I]) on ``rows`` fresh rows."""
    def objective(params, step_t, consts):
        _, _, keys, set_keys, density, importance, l1, _ = consts
        X = feature_batch(structure, keys, set_keys, step_t, density, rows)
        rec, penalty, _ = loss_and_grads(kind, params, X, importance, l1 if l1_on else None, need_grads=False)
        return rec, penalty
    return objective


def make_sparse_chunk(kind: str, structure: Structure, total_rows: int, slots: int, l1_on: bool,
                      from_dataset: bool, need_grads: bool) -> Callable:
    """chunk(params, acc, step_t, rows, consts) → acc plus these rows' (reconstruction, penalty, grads).

    rows: int32 [R], the chunk's row indices; acc = (reconstruction [I], penalty [I], grads) sums
    (grads () without ``need_grads``). Rows come from the fresh sparse stream, or from the dataset.
    """
    def chunk(params, acc, step_t, rows, consts):
        _, _, keys, _, _, importance, l1, data = consts
        if from_dataset:
            feat, val = data[0].index_select(1, rows), data[1].index_select(1, rows)
        else:
            feat, val = draw(structure, data, keys, step_t, rows, slots)
        rec, penalty, grads = row_objective_and_grads(kind, params, feat, val, importance, l1 if l1_on else None,
                                                      total_rows, need_grads)
        grads = tuple(a + g for a, g in zip(acc[2], grads)) if need_grads else ()
        return acc[0] + rec.sum(dim=1), acc[1] + penalty.sum(dim=1), grads
    return chunk


def _row_sets(rows: int, n_features: int, device) -> list[torch.Tensor]:
    per = chunk_rows(n_features, rows)
    return [torch.arange(r, r + per, dtype=torch.int32, device=device) for r in range(0, rows, per)]


def build_step(kind: str, structure: Structure, cfg: TrainConfig, l1_on: bool, slots: int,
               example: tuple, compile: Optional[bool]) -> tuple[Callable, bool]:
    """(step, compiled): the training step of a block (module docstring), compiled for blocks shaped
    like ``example`` = (state, sched, step_t, consts) when ``compile`` (falling back to eager)."""
    static = (kind, structure, cfg.optimizer, cfg.beta1, cfg.beta2, cfg.eps, cfg.batch_size, l1_on)
    if not structure.sparse:
        return maybe_compiled(("dense step",) + static, make_dense_step(kind, structure, cfg, l1_on), example, compile)
    state, sched, step_t, consts = example
    rows = structure.dataset_size or cfg.batch_size
    row_sets = _row_sets(rows, structure.n_features, step_t.device)
    params = state[0]

    def zeros():
        I = params[0].shape[0]
        return (torch.zeros(I, device=step_t.device), torch.zeros(I, device=step_t.device),
                tuple(torch.zeros_like(p) for p in params))

    chunk, compiled = maybe_compiled(
        ("sparse chunk", rows, slots) + static,
        make_sparse_chunk(kind, structure, rows, slots, l1_on, bool(structure.dataset_size), need_grads=True),
        (params, zeros(), step_t, row_sets[0], consts), compile)
    update, compiled = maybe_compiled(("update",) + static, make_update(cfg),
                                      (state, zeros()[2], zeros()[0], zeros()[0], sched, step_t, consts[0], consts[1]),
                                      compiled)

    def step(state, sched, step_t, consts):
        acc = zeros()
        for rows_ in row_sets:
            acc = chunk(state[0], acc, step_t, rows_, consts)
        rec, penalty, grads = acc
        return update(state, grads, rec, penalty, sched, step_t, consts[0], consts[1]), rec, penalty

    return step, compiled


def build_objective(kind: str, structure: Structure, rows: int, l1_on: bool, slots: int, example: tuple,
                    compile: Optional[bool]) -> Callable:
    """objective(params, step_t, consts) → (reconstruction [I], penalty [I]) on ``rows`` fresh rows of
    the stream whose keys ``consts`` holds (no gradients); ``example`` = (params, step_t, consts)."""
    static = ("objective", kind, structure, rows, l1_on, slots)
    if not structure.sparse:
        return maybe_compiled(static, make_dense_objective(kind, structure, rows, l1_on), example, compile)[0]
    params, step_t, consts = example
    row_sets = _row_sets(rows, structure.n_features, step_t.device)
    chunk = maybe_compiled(static, make_sparse_chunk(kind, structure, rows, slots, l1_on, False, need_grads=False),
                           (params, (torch.zeros(params[0].shape[0], device=step_t.device),) * 2 + ((),),
                            step_t, row_sets[0], consts), compile)[0]

    def objective(params, step_t, consts):
        zero = torch.zeros(params[0].shape[0], device=step_t.device)
        acc = (zero, zero, ())
        for rows_ in row_sets:
            acc = chunk(params, acc, step_t, rows_, consts)
        return acc[0], acc[1]

    return objective
