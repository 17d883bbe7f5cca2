"""The trainer: many toy models at once, one fused step, metrics through a callback.

``train(points)`` stacks every point as one instance of one set of tensors and runs a single
function per step: draw the batch from the counter-based RNG, forward, hand-derived backward,
Adam/AdamW, and a per-instance finiteness check. That function is compiled with
``torch.compile`` when it can be and runs eagerly otherwise. At each checkpoint the callback
receives plain numpy arrays (:class:`Checkpoint`); nothing here knows about Ray, Hydra or W&B.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import rng
from .config import PointSpec, TrainConfig
from .data import Structure, density_vector, feature_batch, importance_vector, stream_keys
from .metrics import NORM_THRESHOLD, feature_metrics
from .models import loss_and_grads
from .selection import selection

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Metrics of every instance at one step; leading axis follows the order of the points."""

    step: int
    """Optimiser steps taken (0 = initialisation)."""
    final: bool
    """True at the last checkpoint."""
    lr: np.ndarray
    """[instances] learning rate in force (0 for diverged instances)."""
    loss: np.ndarray
    """[instances] objective (reconstruction + penalty) on the held-out batch that every point
    with the same ``train.eval_seed`` shares."""
    reconstruction: np.ndarray
    """[instances] the reconstruction part of ``loss``: mean of I_i (target_i − x'_i)²."""
    penalty: np.ndarray
    """[instances] the L1 part of ``loss``: (λ/n)·mean_batch ‖h‖₁ (0 without a penalty)."""
    train_loss: np.ndarray
    """[instances] objective on the training batch of this step."""
    frob: np.ndarray
    """[instances] ‖W‖_F²."""
    d_star: np.ndarray
    """[instances] D* = n_hidden / ‖W‖_F²."""
    norm: np.ndarray
    """[instances, n_features] ‖W_i‖."""
    interference: np.ndarray
    """[instances, n_features] Σ_{j≠i} (Ŵ_i·W_j)²."""
    dimensionality: np.ndarray
    """[instances, n_features] D_i."""
    bias: np.ndarray
    """[instances, n_features] b_i."""
    diverged: np.ndarray
    """[instances] bool: loss or weights became non-finite; the instance is frozen."""
    W: np.ndarray
    """[instances, n_hidden, n_features] W at this step (W1 for ``abs``)."""
    b: np.ndarray
    """[instances, n_features] output bias at this step (the same values as ``bias``)."""
    W2: Optional[np.ndarray]
    """[instances, n_features, n_hidden] W2 at this step for ``abs``, else None."""


@dataclass
class TrainResult:
    """Final state of every instance."""

    W: np.ndarray
    """[instances, n_hidden, n_features] final W (W1 for ``abs``)."""
    b: np.ndarray
    """[instances, n_features] final output bias."""
    W2: Optional[np.ndarray]
    """[instances, n_features, n_hidden] final W2 for ``abs``, else None."""
    importance: np.ndarray
    """[instances, n_features] importance I_i."""
    density: np.ndarray
    """[instances, n_features] density p_i."""
    diverged_step: np.ndarray
    """[instances] first step with a non-finite loss or weight, −1 if none."""
    final: Checkpoint
    """The last checkpoint."""
    selection_loss: np.ndarray
    """[instances] expected objective of the final weights, estimated on evaluation data shared by
    every point with the same ``train.eval_seed`` (toymodels/selection.py): the loss to pick seeds by."""
    selection_reconstruction: np.ndarray
    """[instances] the reconstruction part of ``selection_loss``."""
    selection_se: np.ndarray
    """[instances] standard error of ``selection_loss`` (toymodels/selection.py)."""
    seconds: float
    """Wall time of the training loop (compilation included)."""
    model_steps_per_s: float
    """instances × steps / seconds."""
    compiled: bool
    """Whether the step ran under torch.compile."""


def pack_key(point: PointSpec) -> tuple:
    """Points with equal keys can be trained together as instances of one set of tensors."""
    t = point.train
    return (point.model.kind, point.model.n_features, point.model.n_hidden, t.steps, t.batch_size,
            t.eval_batch_size, t.optimizer, t.beta1, t.beta2, t.eps, t.schedule, t.warmup_steps,
            t.log_checkpoints, t.linear_checkpoints, dataclasses.astuple(Structure.of(point)))


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Step 0, ``log_checkpoints`` log-spaced steps, ``linear_checkpoints`` linear ones, the last."""
    steps = {0, cfg.steps}
    if cfg.log_checkpoints:
        steps.update(int(round(s)) for s in np.logspace(0, math.log10(cfg.steps), cfg.log_checkpoints))
    if cfg.linear_checkpoints:
        steps.update(int(round(s)) for s in np.linspace(0, cfg.steps, cfg.linear_checkpoints + 1))
    return sorted(s for s in steps if 0 <= s <= cfg.steps)


def lr_multiplier(cfg: TrainConfig, step: int) -> float:
    """Schedule factor at ``step``: linear warm-up, then constant, linear or cosine decay to 0."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
    return 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def init_params(points: Sequence[PointSpec], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Xavier-normal W per instance (its own m×n matrix, its own seed, std × train.init_scale), zero bias.

    Returns (W, b) or (W1, W2, b) in the trainer's layout: b is [I, n, 1].
    """
    kind, n, m = points[0].model.kind, points[0].model.n_features, points[0].model.n_hidden
    std = math.sqrt(2.0 / (n + m))
    Ws, W2s = [], []
    for p in points:
        k1, k2 = rng.instance_keys(p.seed, rng.STREAM_INIT)
        g = torch.Generator().manual_seed(((k1 & 0xFFFFFFFF) << 32) | (k2 & 0xFFFFFFFF))
        scale = std * p.train.init_scale
        Ws.append(torch.randn(m, n, generator=g) * scale)
        if kind == "abs":
            W2s.append(torch.randn(n, m, generator=g) * scale)
    b = torch.zeros(len(points), n, 1, device=device)
    W = torch.stack(Ws).to(device)
    return (W, torch.stack(W2s).to(device), b) if kind == "abs" else (W, b)


def _make_step(kind: str, structure: Structure, cfg: TrainConfig, l1_on: bool) -> Callable:
    """The fused training step for one pack configuration (all static choices closed over)."""
    beta1, beta2, eps, batch = cfg.beta1, cfg.beta2, cfg.eps, cfg.batch_size
    decoupled = cfg.optimizer == "adamw"

    def step(params, m, v, t, lr, wd, keys, set_keys, step_t, density, importance, l1):
        X = feature_batch(structure, keys, set_keys, step_t, density, batch)
        rec, penalty, grads = loss_and_grads(kind, params, X, importance, l1 if l1_on else None)
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
        new_p = [torch.where(keep, a, b) for a, b in zip(new_p, params)]
        new_m = [torch.where(keep, a, b) for a, b in zip(new_m, m)]
        new_v = [torch.where(keep, a, b) for a, b in zip(new_v, v)]
        return tuple(new_p), tuple(new_m), tuple(new_v), rec, penalty, finite

    return step


def _make_objective(kind: str, structure: Structure, rows: int, blocks: int, l1_on: bool) -> Callable:
    """Objective of the parameters on ``blocks`` consecutive batches of ``rows`` rows, no gradients.

    Returns a function giving (reconstruction, penalty), each [instances, blocks].
    """
    def objective(params, keys, set_keys, step_t, density, importance, l1):
        X = feature_batch(structure, keys, set_keys, step_t, density, rows, blocks)
        I, n = X.shape[0], X.shape[1]
        X = X.view(I, n, blocks, rows).transpose(1, 2).reshape(I * blocks, n, rows)
        rep = [p.repeat_interleave(blocks, dim=0) for p in params]
        rec, penalty, _ = loss_and_grads(kind, tuple(rep), X, importance.repeat_interleave(blocks, dim=0),
                                         l1.repeat_interleave(blocks, dim=0) if l1_on else None,
                                         need_grads=False)
        return rec.view(I, blocks), penalty.view(I, blocks)
    return objective


_COMPILED: dict = {}

AUTO_COMPILE_MIN_WORK = 2.5e8
"""With ``compile=None``, compile only when instances × features × batch × steps reaches this:
below it, eager training finishes before compilation (10–20 s on 2 cores) would pay off."""


def _compiler_available() -> bool:
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def _maybe_compiled(key: tuple, fn: Callable, want_compile: Optional[bool]):
    """``fn`` compiled with torch.compile (cached per process under ``key``), or ``fn`` itself."""
    if not want_compile:
        return fn, False
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=False)
    return _COMPILED[key], True


def tune_allocator() -> bool:
    """Keep large CPU tensors on the glibc heap instead of fresh mmaps, for the rest of the process.

    Each training step of a large pack allocates tensors of tens of MB; by default glibc maps and
    unmaps them every time, and the page faults can cost more than the arithmetic. This sets
    M_MMAP_MAX=0, a large M_TRIM_THRESHOLD and M_TOP_PAD. glibc cannot be put back as it was
    afterwards (its dynamic mmap threshold stays off), so :func:`train` never calls this: call it
    once in a process that exists to train (the sweep's trial workers and the benchmarks do), or
    start Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. Returns whether
    the settings were applied (False where libc is not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    INT_MAX = 2**31 - 1  # mallopt takes a C int: larger values would wrap
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, INT_MAX) and mallopt(M_TOP_PAD, 256 << 20))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _checkpoint(step: int, final: bool, params, lr, train_loss, rec, penalty, diverged,
                norm_threshold: float, kind: str) -> Checkpoint:
    fm = feature_metrics(params[0], norm_threshold)
    b = _np(params[-1].squeeze(-1))
    return Checkpoint(step=step, final=final, lr=_np(lr.view(-1)), loss=_np(rec + penalty),
                      reconstruction=_np(rec), penalty=_np(penalty), train_loss=_np(train_loss),
                      frob=_np(fm["frob"]), d_star=_np(fm["d_star"]), norm=_np(fm["norm"]),
                      interference=_np(fm["interference"]), dimensionality=_np(fm["dimensionality"]),
                      bias=b, diverged=diverged.detach().cpu().numpy().astype(bool),
                      W=_np(params[0]), b=b.copy(), W2=_np(params[1]) if kind == "abs" else None)


def train(points: Sequence[PointSpec], *, device: str | torch.device = "cpu",
          compile: Optional[bool] = None, callback: Optional[Callable[[Checkpoint], None]] = None,
          norm_threshold: float = NORM_THRESHOLD) -> TrainResult:
    """Train every point as one instance; all points must share :func:`pack_key`.

    device: "cpu", "cuda", "cuda:N" or "auto". compile: True/False, or None to compile when the
    work is large enough (:data:`AUTO_COMPILE_MIN_WORK`) and a compiler is available; a failed
    compilation falls back to eager. callback: called with a :class:`Checkpoint` at every step of
    :func:`checkpoint_steps`. At the end every point gets its selection loss (toymodels/selection.py).
    """
    points = list(points)
    if not points:
        raise ValueError("train: no points given")
    key = pack_key(points[0])
    for p in points[1:]:
        if pack_key(p) != key:
            raise ValueError(f"train: points differ in pack_key ({pack_key(p)} vs {key}); "
                             "train incompatible points separately")
    dev = resolve_device(device)
    first = points[0]
    kind, cfg, structure = first.model.kind, first.train, Structure.of(first)
    n, I, B = first.model.n_features, len(points), cfg.batch_size
    if compile is None:
        compile = (I * n * B * cfg.steps >= AUTO_COMPILE_MIN_WORK
                   and (dev.type != "cpu" or _compiler_available()))

    f32 = dict(dtype=torch.float32, device=dev)
    importance = torch.tensor(np.stack([importance_vector(p.model, p.data) for p in points]), **f32)
    density = torch.tensor(np.stack([density_vector(p.model, p.data) for p in points]), **f32)
    lr_base = torch.tensor([p.train.lr for p in points], **f32).view(I, 1, 1)
    wd = torch.tensor([p.train.weight_decay for p in points], **f32).view(I, 1, 1)
    l1 = torch.tensor([p.model.l1_penalty for p in points], **f32).view(I, 1, 1)
    l1_on = bool((l1 > 0).any())
    keys, set_keys = stream_keys(points, "train", dev)
    eval_keys, eval_set_keys = stream_keys(points, "eval", dev)
    imp3, dens3 = importance.unsqueeze(-1), density.unsqueeze(-1)

    def step_tensor(t: int) -> torch.Tensor:
        return torch.tensor(t, dtype=torch.int32, device=dev)

    params = init_params(points, dev)
    m_state = tuple(torch.zeros_like(p) for p in params)
    v_state = tuple(torch.zeros_like(p) for p in params)
    active = torch.ones(I, dtype=torch.bool, device=dev)
    diverged_step = torch.full((I,), -1, dtype=torch.int64, device=dev)
    ckpts = set(checkpoint_steps(cfg))

    static = (kind, dataclasses.astuple(structure), cfg.optimizer, cfg.beta1, cfg.beta2, cfg.eps, B, l1_on, str(dev))
    eager_step = _make_step(kind, structure, cfg, l1_on)
    step_fn, compiled = _maybe_compiled(("step",) + static, eager_step, compile)
    no_lr = torch.zeros_like(lr_base)
    one = torch.tensor(1.0, **f32)

    def objective(rows: int, blocks: int) -> Callable:
        """(reconstruction, penalty) [I, blocks] of ``blocks`` batches of ``rows`` rows (compiled alike)."""
        fn = _make_objective(kind, structure, rows, blocks, l1_on)
        key = ("objective", kind, dataclasses.astuple(structure), rows, blocks, l1_on, str(dev))
        return _maybe_compiled(key, fn, compiled)[0]

    def batch_objective(params, keys_, set_keys_, step_t) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective on a batch of the training size: the step with lr 0, its update discarded."""
        out = step_fn(params, m_state, v_state, one, no_lr, wd, keys_, set_keys_, step_t, dens3, imp3, l1)
        return out[3], out[4]

    zero = step_tensor(0)
    if cfg.eval_batch_size == B:
        def eval_objective(params):
            return batch_objective(params, eval_keys, eval_set_keys, zero)
    else:
        def eval_objective(params):
            rec, pen = objective(cfg.eval_batch_size, 1)(params, eval_keys, eval_set_keys, zero, dens3, imp3, l1)
            return rec[:, 0], pen[:, 0]

    last: Optional[Checkpoint] = None
    start = time.perf_counter()
    with torch.no_grad():
        for t in range(cfg.steps + 1):
            lr_now = lr_base * (lr_multiplier(cfg, t) * active.view(I, 1, 1))
            if t == cfg.steps:  # the final state: no update, just its training-batch objective
                train_rec, train_pen = batch_objective(params, keys, set_keys, step_tensor(t))
                new = None
            else:
                args = (params, m_state, v_state, torch.tensor(float(t + 1), **f32), lr_now, wd, keys,
                        set_keys, step_tensor(t), dens3, imp3, l1)
                try:
                    new = step_fn(*args)
                except Exception as exc:  # compilation failure: fall back to eager, once
                    if not compiled:
                        raise
                    log.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__, exc)
                    step_fn, compiled = eager_step, False
                    new = step_fn(*args)
                train_rec, train_pen = new[3], new[4]
            if t in ckpts:
                rec, pen = eval_objective(params)
                last = _checkpoint(t, t == cfg.steps, params, lr_now, train_rec + train_pen, rec, pen,
                                   ~active, norm_threshold, kind)
                if callback is not None:
                    callback(last)
            if new is not None:
                params, m_state, v_state, _, _, finite = new
                newly = active & ~finite
                diverged_step = torch.where(newly, torch.full_like(diverged_step, t), diverged_step)
                active = active & finite
        seconds = time.perf_counter() - start
        sel_keys, sel_set_keys = stream_keys(points, "select", dev)
        sel = selection(kind, structure, params, density, imp3, l1 if l1_on else None, sel_keys, sel_set_keys,
                        cfg.selection_rows)

    return TrainResult(W=_np(params[0]), b=_np(params[-1].squeeze(-1)),
                       W2=_np(params[1]) if kind == "abs" else None,
                       importance=_np(importance), density=_np(density),
                       diverged_step=diverged_step.cpu().numpy(), final=last, seconds=seconds,
                       model_steps_per_s=I * cfg.steps / max(seconds, 1e-9), compiled=compiled,
                       selection_loss=sel.loss.numpy(), selection_reconstruction=sel.reconstruction.numpy(),
                       selection_se=sel.standard_error.numpy())

