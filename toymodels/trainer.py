"""The trainer: many toy models at once, one fused step, metrics through a callback.

``train(points)`` stacks every point as one instance of one set of tensors and runs a single
function per step: draw the batch from the counter-based RNG, forward, hand-derived backward,
Adam/AdamW, and a per-instance finiteness check. That function is compiled with
``torch.compile`` when it can be and runs eagerly otherwise. At each checkpoint the callback
receives plain numpy arrays (:class:`Checkpoint`); nothing here knows about Ray, Hydra or W&B.
"""

from __future__ import annotations

import contextlib
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
from .data import Structure, density_vector, feature_batch, importance_vector
from .metrics import NORM_THRESHOLD, feature_metrics
from .models import loss_and_grads

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
    """[instances] loss on the instance's fixed held-out batch."""
    train_loss: np.ndarray
    """[instances] loss on the training batch of this step."""
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

    def step(params, m, v, t, lr, wd, keys, set_keys, offset, set_offset, density, importance, l1):
        X = feature_batch(structure, keys, set_keys, offset, set_offset, density, batch)
        loss, grads = loss_and_grads(kind, params, X, importance, l1 if l1_on else None)
        bc1 = 1.0 - beta1 ** t
        bc2 = torch.sqrt(1.0 - beta2 ** t)
        new_p, new_m, new_v = [], [], []
        finite = torch.isfinite(loss)
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
        return tuple(new_p), tuple(new_m), tuple(new_v), loss, finite

    return step


_COMPILED: dict = {}

AUTO_COMPILE_MIN_WORK = 2.5e8
"""With ``compile=None``, compile only when instances × features × batch × steps reaches this:
below it, eager training finishes before compilation (10–20 s on 2 cores) would pay off."""


def _compiler_available() -> bool:
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def _maybe_compiled(key: tuple, fn: Callable, device: torch.device, want_compile: Optional[bool]):
    """``fn`` compiled with torch.compile (cached per process under ``key``), or ``fn`` itself."""
    if not want_compile:
        return fn, False
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=False)
    return _COMPILED[key], True


def _make_batch_loss(kind: str, structure: Structure, batch: int) -> Callable:
    """Loss of the parameters on a freshly drawn batch, without gradients."""
    def batch_loss(params, keys, set_keys, offset, set_offset, density, importance):
        X = feature_batch(structure, keys, set_keys, offset, set_offset, density, batch)
        return loss_and_grads(kind, params, X, importance, need_grads=False)[0]
    return batch_loss


@contextlib.contextmanager
def _heap_allocator(device: torch.device):
    """Keep large CPU tensors on the glibc heap instead of fresh mmaps while training.

    Each step allocates tensors of tens of MB; by default glibc maps and unmaps them every time,
    and the page faults cost more than the arithmetic. Defaults are restored afterwards.
    """
    libc = None
    if device.type == "cpu" and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt  # noqa: B018 - glibc only
    if libc is None:
        yield
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    INT_MAX = 2**31 - 1  # mallopt takes a C int: larger values would wrap
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, INT_MAX)
    libc.mallopt(M_TOP_PAD, 256 << 20)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, 65536)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TOP_PAD, 0)
        libc.malloc_trim(0)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _checkpoint(step: int, final: bool, params, lr, train_loss, eval_loss, diverged,
                norm_threshold: float) -> Checkpoint:
    fm = feature_metrics(params[0], norm_threshold)
    np_ = lambda t: t.detach().to("cpu", torch.float32).numpy()  # noqa: E731
    return Checkpoint(step=step, final=final, lr=np_(lr.view(-1)), loss=np_(eval_loss),
                      train_loss=np_(train_loss), frob=np_(fm["frob"]), d_star=np_(fm["d_star"]),
                      norm=np_(fm["norm"]), interference=np_(fm["interference"]),
                      dimensionality=np_(fm["dimensionality"]), bias=np_(params[-1].squeeze(-1)),
                      diverged=diverged.detach().cpu().numpy().astype(bool))


def train(points: Sequence[PointSpec], *, device: str | torch.device = "cpu",
          compile: Optional[bool] = None, callback: Optional[Callable[[Checkpoint], None]] = None,
          norm_threshold: float = NORM_THRESHOLD) -> TrainResult:
    """Train every point as one instance; all points must share :func:`pack_key`.

    device: "cpu", "cuda", "cuda:N" or "auto". compile: True/False, or None to compile when the
    work is large enough (:data:`AUTO_COMPILE_MIN_WORK`) and a compiler is available; a failed
    compilation falls back to eager. callback: called with a
    :class:`Checkpoint` at every step of :func:`checkpoint_steps`.
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
    seeds = [p.seed for p in points]

    f32 = dict(dtype=torch.float32, device=dev)
    importance = torch.tensor(np.stack([importance_vector(p.model, p.data) for p in points]), **f32)
    density = torch.tensor(np.stack([density_vector(p.model, p.data) for p in points]), **f32)
    lr_base = torch.tensor([p.train.lr for p in points], **f32).view(I, 1, 1)
    wd = torch.tensor([p.train.weight_decay for p in points], **f32).view(I, 1, 1)
    l1 = torch.tensor([p.model.l1_penalty for p in points], **f32).view(I, 1, 1)
    l1_on = bool((l1 > 0).any())
    keys = rng.keys_tensor(seeds, rng.STREAM_TRAIN, dev)
    set_keys = rng.keys_tensor(seeds, rng.STREAM_SETS, dev)
    imp3, dens3 = importance.unsqueeze(-1), density.unsqueeze(-1)
    n_sets = max(structure.n_sets, 1)

    def offsets(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(rng.counter_offset(t, n * B), dtype=torch.int32, device=dev),
                torch.tensor(rng.counter_offset(t, n_sets * B), dtype=torch.int32, device=dev))

    # The fixed held-out batch of each instance (its own stream, drawn once).
    eval_keys = rng.keys_tensor(seeds, rng.STREAM_EVAL, dev)
    eval_set_keys = rng.keys_tensor(seeds, rng.STREAM_EVAL_SETS, dev)
    zero = torch.tensor(0, dtype=torch.int32, device=dev)

    params = init_params(points, dev)
    m_state = tuple(torch.zeros_like(p) for p in params)
    v_state = tuple(torch.zeros_like(p) for p in params)
    active = torch.ones(I, dtype=torch.bool, device=dev)
    diverged_step = torch.full((I,), -1, dtype=torch.int64, device=dev)
    ckpts = set(checkpoint_steps(cfg))

    static = (kind, dataclasses.astuple(structure), cfg.optimizer, cfg.beta1, cfg.beta2, cfg.eps, B, l1_on, str(dev))
    eager_step = _make_step(kind, structure, cfg, l1_on)
    step_fn, compiled = _maybe_compiled(("step",) + static, eager_step, dev, compile)
    no_lr = torch.zeros_like(lr_base)
    one = torch.tensor(1.0, **f32)

    def batch_loss(params, keys_, set_keys_, offset, set_offset) -> torch.Tensor:
        """Loss on a batch of the training size: the step with lr 0, its update discarded."""
        return step_fn(params, m_state, v_state, one, no_lr, wd, keys_, set_keys_, offset, set_offset,
                       dens3, imp3, l1)[3]

    if cfg.eval_batch_size == B:
        def eval_loss(params) -> torch.Tensor:
            return batch_loss(params, eval_keys, eval_set_keys, zero, zero)
    else:
        eval_fn, _ = _maybe_compiled(("eval",) + static[:2] + (cfg.eval_batch_size, str(dev)),
                                     _make_batch_loss(kind, structure, cfg.eval_batch_size), dev, compile)

        eval_eager = _make_batch_loss(kind, structure, cfg.eval_batch_size)

        def eval_loss(params) -> torch.Tensor:
            return (eval_fn if compiled else eval_eager)(params, eval_keys, eval_set_keys, zero, zero, dens3, imp3)

    last: Optional[Checkpoint] = None
    start = time.perf_counter()
    with torch.no_grad(), _heap_allocator(dev):
        for t in range(cfg.steps + 1):
            lr_now = lr_base * (lr_multiplier(cfg, t) * active.view(I, 1, 1))
            if t == cfg.steps:  # the final state: no update, just its training-batch loss
                train_loss = batch_loss(params, keys, set_keys, *offsets(t))
                new = None
            else:
                args = (params, m_state, v_state, torch.tensor(float(t + 1), **f32), lr_now, wd, keys,
                        set_keys, *offsets(t), dens3, imp3, l1)
                try:
                    new = step_fn(*args)
                except Exception as exc:  # compilation failure: fall back to eager, once
                    if not compiled:
                        raise
                    log.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__, exc)
                    step_fn, compiled = eager_step, False
                    new = step_fn(*args)
                train_loss = new[3]
            if t in ckpts:
                last = _checkpoint(t, t == cfg.steps, params, lr_now, train_loss, eval_loss(params),
                                   ~active, norm_threshold)
                if callback is not None:
                    callback(last)
            if new is not None:
                params, m_state, v_state, _, finite = new
                newly = active & ~finite
                diverged_step = torch.where(newly, torch.full_like(diverged_step, t), diverged_step)
                active = active & finite
    seconds = time.perf_counter() - start

    cpu = lambda x: x.detach().to("cpu", torch.float32).numpy()  # noqa: E731
    return TrainResult(W=cpu(params[0]), b=cpu(params[-1].squeeze(-1)),
                       W2=cpu(params[1]) if kind == "abs" else None,
                       importance=cpu(importance), density=cpu(density),
                       diverged_step=diverged_step.cpu().numpy(), final=last, seconds=seconds,
                       model_steps_per_s=I * cfg.steps / max(seconds, 1e-9), compiled=compiled)
