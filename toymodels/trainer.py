"""The trainer: many toy models at once, one fused step, metrics through a callback.

``train(points)`` stacks every point as one instance of one set of tensors and runs one step
function per step (toymodels/steps.py): draw the batch from the counter-based RNG, forward,
hand-derived backward, Adam/AdamW, and a per-instance finiteness check. The instances are split
into blocks sized to the CPU's caches (toymodels/sizing.py); on a CPU each thread takes whole
blocks and runs them from one checkpoint to the next, so threads meet only at checkpoints. The
step is compiled with TorchInductor when it can be (toymodels/compiled.py), eager otherwise. At
each checkpoint the callback receives plain numpy arrays (:class:`Checkpoint`); nothing here
knows about Ray, Hydra or W&B. A run can hand out its :class:`TrainState` as it goes and be
continued from it later, with the same results as a run never interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import rng
from .compiled import AUTO_COMPILE_MIN_WORK, compiler_available
from .config import PointSpec
from .data import Structure, importance_vector
from .metrics import NORM_THRESHOLD, feature_metrics
from .models import hidden
from .schedule import checkpoint_steps, lr_multiplier
from .selection import selection
from .sizing import block_size, even_blocks, step_bytes, threads_for
from .sparse import Tables, sparse_hidden
from .steps import build_objective, build_step
from .streams import densities, draw_rows, stream_keys

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
    data_norm: Optional[np.ndarray] = None
    """[instances, dataset_size] ‖h_t‖ of each training input's hidden vector, for a finite dataset
    of at most :data:`DATAPOINT_METRICS_MAX` inputs (else None)."""
    data_dimensionality: Optional[np.ndarray] = None
    """[instances, dataset_size] the data-point dimensionality of Henighan et al. (2023): D_t of the
    hidden vectors h_t of the training inputs, the formula of ``dimensionality`` applied to them."""


DATAPOINT_METRICS_MAX = 4096
"""Largest finite dataset whose per-input metrics (``data_norm``, ``data_dimensionality``) every
checkpoint carries (their cost grows with its square)."""


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
    """Whether the step ran compiled (toymodels/compiled.py)."""
    history: list[Checkpoint] = dataclasses.field(default_factory=list)
    """Every checkpoint, in order (``final`` is the last)."""


@dataclass
class TrainState:
    """Where a run stands after ``step`` steps: what :func:`train` needs to continue it (``resume``).

    Picklable; every tensor is on the CPU. Parameter names: ``W`` [I, n_hidden, n_features] (W1
    for ``abs``), ``W2`` [I, n_features, n_hidden] (``abs`` only), ``b`` [I, n_features].
    """

    step: int
    """Optimiser steps completed."""
    params: dict[str, torch.Tensor]
    """The parameters by name."""
    optim: dict
    """The optimiser's state: ``m`` and ``v`` (Adam's moments, dicts shaped like ``params``) and
    ``diverged_step`` int32 [I] (−1 while an instance trains; once set, the instance is frozen)."""
    history: list[Checkpoint]
    """The checkpoints recorded so far, in order."""
    points: str
    """Digest of the points (:func:`points_digest`): a state continues only the run it came from."""


def points_digest(points: Sequence[PointSpec]) -> str:
    """16 hex digits naming a list of points, their order included."""
    return hashlib.sha256("\n".join(repr(p) for p in points).encode()).hexdigest()[:16]


def param_names(kind: str) -> tuple[str, ...]:
    """Names of the trainer's parameters, in its order."""
    return ("W", "W2", "b") if kind == "abs" else ("W", "b")


def pack_key(point: PointSpec) -> tuple:
    """Points with equal keys can be trained together as instances of one set of tensors."""
    t = point.train
    return (point.model.kind, point.model.n_features, point.model.n_hidden, t.steps, t.batch_size,
            t.eval_batch_size, t.optimizer, t.beta1, t.beta2, t.eps, t.schedule, t.warmup_steps,
            t.log_checkpoints, t.linear_checkpoints, dataclasses.astuple(Structure.of(point)))


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
                norm_threshold: float, kind: str, data_hidden: Optional[torch.Tensor]) -> Checkpoint:
    fm = feature_metrics(params[0], norm_threshold)
    b = _np(params[-1].squeeze(-1))
    dm = feature_metrics(data_hidden, norm_threshold) if data_hidden is not None else None
    return Checkpoint(step=step, final=final, lr=_np(lr.view(-1)), loss=_np(rec + penalty),
                      reconstruction=_np(rec), penalty=_np(penalty), train_loss=_np(train_loss),
                      frob=_np(fm["frob"]), d_star=_np(fm["d_star"]), norm=_np(fm["norm"]),
                      interference=_np(fm["interference"]), dimensionality=_np(fm["dimensionality"]),
                      bias=b, diverged=diverged.detach().cpu().numpy().astype(bool),
                      W=_np(params[0]), b=b.copy(), W2=_np(params[1]) if kind == "abs" else None,
                      data_norm=None if dm is None else _np(dm["norm"]),
                      data_dimensionality=None if dm is None else _np(dm["dimensionality"]))


def train(points: Sequence[PointSpec], *, device: str | torch.device = "cpu",
          compile: Optional[bool] = None, callback: Optional[Callable[[Checkpoint], None]] = None,
          norm_threshold: float = NORM_THRESHOLD, block: Optional[int] = None,
          resume: Optional[TrainState] = None, on_state: Optional[Callable[[TrainState], None]] = None,
          state_every_s: float = 300.0) -> TrainResult:
    """Train every point as one instance; all points must share :func:`pack_key`.

    device: "cpu", "cuda", "cuda:N" or "auto". compile: True/False, or None to compile when the
    work is large enough (:data:`AUTO_COMPILE_MIN_WORK`) and a compiler is available; a failed
    compilation falls back to eager. callback: called with a :class:`Checkpoint` at every step of
    :func:`checkpoint_steps`. block: instances computed at once (default: sized to the cache,
    toymodels/sizing.py); any value trains the same models. While training on a CPU with several
    blocks, torch's intra-op threads are set to 1 (restored afterwards). At the end every point
    gets its selection loss (toymodels/selection.py).

    on_state: called with a :class:`TrainState` at a checkpoint step (after ``callback``, the last
    checkpoint excepted) once ``state_every_s`` seconds have passed since its last call or the
    start (0: at every checkpoint). resume: a state of a run of the same points; training continues
    from ``resume.step``, ``callback`` sees only the checkpoints after it, and on a CPU the result
    equals the uninterrupted run's bit for bit (the device, ``compile`` and ``block`` being the same).
    """
    points = list(points)
    if not points:
        raise ValueError("train: no points given")
    key = pack_key(points[0])
    for p in points[1:]:
        if pack_key(p) != key:
            raise ValueError(f"train: points differ in pack_key ({pack_key(p)} vs {key}); "
                             "train incompatible points separately")
    if state_every_s < 0 or not math.isfinite(state_every_s):
        raise ValueError(f"train: state_every_s must be finite and >= 0, got {state_every_s}")
    dev = resolve_device(device)
    first = points[0]
    kind, cfg, structure = first.model.kind, first.train, Structure.of(first)
    n, m, I = first.model.n_features, first.model.n_hidden, len(points)
    B, T = cfg.batch_size, structure.dataset_size
    rows = T or B
    if compile is None:
        compile = I * n * rows * cfg.steps >= AUTO_COMPILE_MIN_WORK and compiler_available(dev)
    per_instance = step_bytes(kind, n, m, rows, sparse=structure.sparse)
    if block is None:
        block = block_size(I, per_instance, dev, bool(compile))
    count, size = even_blocks(I, max(1, block))
    padded = points + [points[-1]] * (count * size - I)   # copies of the last point fill the last block

    f32 = dict(dtype=torch.float32, device=dev)
    importance = torch.tensor(np.stack([importance_vector(p.model, p.data) for p in padded]), **f32)
    density = densities(padded, dev)
    lr_base = torch.tensor([p.train.lr for p in padded], **f32).view(-1, 1, 1)
    wd = torch.tensor([p.train.weight_decay for p in padded], **f32).view(-1, 1, 1)
    l1 = torch.tensor([p.model.l1_penalty for p in padded], **f32).view(-1, 1, 1)
    l1_on = bool((l1 > 0).any())
    imp3, dens3 = importance.unsqueeze(-1), density.unsqueeze(-1)
    tables = Tables(density) if structure.sparse else None
    slots = tables.slots if tables is not None else 0
    stream_data = (tables.count_cdf, tables.cap, tables.feature_cdf) if tables is not None else ()
    dataset = draw_rows(structure, *stream_keys(padded, "dataset", dev), 0, T, density) if T else None
    train_data = (dataset,) if T and not structure.sparse else dataset if T else stream_data

    def split(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per block, the block's rows of each tensor (views)."""
        return list(zip(*(t.split(size) for t in tensors)))

    def joined(parts) -> torch.Tensor:
        """Blocks' [size, ...] tensors → the points' [I, ...] (padding dropped)."""
        return torch.cat(list(parts))[:I]

    def block_consts(stream: str, data: tuple) -> list[tuple]:
        parts = split(lr_base, wd, *stream_keys(padded, stream, dev), dens3, imp3, l1, *data)
        return [part[:7] + (part[7:],) for part in parts]

    consts = block_consts("train", train_data)
    eval_consts = block_consts("eval", stream_data)
    if resume is None:
        start_step, history = 0, []
        params0 = init_params(padded, dev)
        moments = (tuple(torch.zeros_like(x) for x in params0), tuple(torch.zeros_like(x) for x in params0))
        diverged0 = torch.full((len(padded),), -1, dtype=torch.int32, device=dev)
    else:
        start_step, history = resume.step, list(resume.history)
        params0, moments, diverged0 = _restored(resume, points, kind, cfg.steps, len(padded), dev)
    states = [(p, m_, v_, d < 0, d) for p, m_, v_, d in
              zip(split(*params0), split(*moments[0]), split(*moments[1]), diverged0.split(size))]
    sched = torch.tensor([[t + 1, lr_multiplier(cfg, t)] for t in range(cfg.steps + 1)], **f32)
    step_index = torch.arange(cfg.steps + 1, dtype=torch.int32, device=dev)
    no_update = torch.tensor([1.0, 0.0], **f32)        # lr 0: the step's objective, its update discarded
    with_datapoints = 0 < T <= DATAPOINT_METRICS_MAX

    def state_now(step: int) -> TrainState:
        """The blocks' states gathered for the points (padding dropped), on the CPU."""
        def gathered(i: int) -> dict[str, torch.Tensor]:
            return {name: joined(s[i][k] for s in states).reshape(I, *shape).cpu().clone()
                    for k, (name, shape) in enumerate(zip(names, shapes))}
        return TrainState(step=step, params=gathered(0), optim={
            "m": gathered(1), "v": gathered(2), "diverged_step": joined(s[4] for s in states).cpu().clone()},
            history=list(history), points=points_digest(points))

    names = param_names(kind)
    shapes = [tuple(p.shape[1:]) if name != "b" else (n,) for name, p in zip(names, states[0][0])]
    threads = torch.get_num_threads()
    workers, intra = threads_for(count, size * per_instance, threads, dev, bool(compile), structure.sparse)
    last: Optional[Checkpoint] = history[-1] if history else None
    start = last_state = time.perf_counter()
    try:
        torch.set_num_threads(intra)
        step_fn, compiled = build_step(kind, structure, cfg, l1_on, slots,
                                       (states[0], sched[0], step_index[0], consts[0]), compile)
        if cfg.eval_batch_size == B and not T and not structure.sparse:
            def eval_block(j: int, state) -> tuple[torch.Tensor, torch.Tensor]:
                _, rec, pen = step_fn(state, no_update, step_index[0], eval_consts[j])
                return rec, pen
        else:
            objective = build_objective(kind, structure, cfg.eval_batch_size, l1_on, slots,
                                        (states[0][0], step_index[0], eval_consts[0]), compiled)

            def eval_block(j: int, state) -> tuple[torch.Tensor, torch.Tensor]:
                return objective(state[0], step_index[0], eval_consts[j])

        def advance(j: int, first: int, c: int):
            """Block j from step ``first`` to checkpoint ``c``: its state at ``c``, the held-out
            objective there, and the objective of step ``c``'s training batch."""
            with torch.no_grad():
                state = states[j]
                for t in range(first, c):
                    state = step_fn(state, sched[t], step_index[t], consts[j])[0]
                held_out = eval_block(j, state)
                new, rec, pen = step_fn(state, sched[c] if c < cfg.steps else no_update, step_index[c], consts[j])
            states[j] = new if c < cfg.steps else state
            return state, held_out, rec + pen

        if not compiled:
            workers, intra = threads_for(count, size * per_instance, threads, dev, False, structure.sparse)
            torch.set_num_threads(intra)
        with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
            run = pool.map if workers > 1 else map
            first = start_step
            for c in (c for c in checkpoint_steps(cfg) if c >= start_step):
                out = list(run(lambda j: advance(j, first, c), range(count)))   # noqa: B023 - used at once
                first = c + 1
                params = tuple(joined(p) for p in zip(*(o[0][0] for o in out)))
                active = joined(o[0][3] for o in out)
                data_hidden = _data_hidden(kind, params[0], dataset, I, structure.sparse) if with_datapoints else None
                last = _checkpoint(c, c == cfg.steps, params, lr_base[:I] * (float(sched[c, 1]) * active.view(-1, 1, 1)),
                                   joined(o[2] for o in out), joined(o[1][0] for o in out),
                                   joined(o[1][1] for o in out), ~active, norm_threshold, kind, data_hidden)
                history.append(last)
                if callback is not None:
                    callback(last)
                if on_state is not None and c < cfg.steps and time.perf_counter() - last_state >= state_every_s:
                    on_state(state_now(c + 1))
                    last_state = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        final_params = tuple(joined(p) for p in zip(*(s[0] for s in states)))
        diverged_step = joined(s[4] for s in states).to(torch.int64)
        sel_keys, sel_set_keys = stream_keys(points, "select", dev)
        sel = selection(kind, structure, final_params, density[:I], imp3[:I], l1[:I] if l1_on else None,
                        sel_keys, sel_set_keys, cfg.selection_rows)

    return TrainResult(W=_np(final_params[0]), b=_np(final_params[-1].squeeze(-1)),
                       W2=_np(final_params[1]) if kind == "abs" else None,
                       importance=_np(importance[:I]), density=_np(density[:I]),
                       diverged_step=diverged_step.cpu().numpy(), final=last, seconds=seconds,
                       model_steps_per_s=I * (cfg.steps - start_step) / max(seconds, 1e-9), compiled=compiled,
                       selection_loss=sel.loss.numpy(), selection_reconstruction=sel.reconstruction.numpy(),
                       selection_se=sel.standard_error.numpy(), history=history)


def _restored(state: TrainState, points: list[PointSpec], kind: str, steps: int, padded: int,
              device: torch.device) -> tuple[tuple, tuple, torch.Tensor]:
    """(params, (m, v), diverged_step) of ``state`` in the trainer's layout, on ``device``, the
    last point's rows repeated to ``padded`` instances; a ValueError if it is not these points'."""
    if not isinstance(state, TrainState):
        raise ValueError(f"train: resume must be a TrainState, got {type(state).__name__}")
    if state.points != points_digest(points):
        raise ValueError("train: resume: the state belongs to other points (or another order of them); "
                         "resume with the points it was saved from")
    if not 0 <= state.step <= steps:
        raise ValueError(f"train: resume: state.step = {state.step} is outside 0..train.steps = {steps}")
    I = len(points)
    expected = {"W": (I, points[0].model.n_hidden, points[0].model.n_features), "b": (I, points[0].model.n_features)}
    if kind == "abs":
        expected["W2"] = (I, points[0].model.n_features, points[0].model.n_hidden)
    names = param_names(kind)

    def layout(group: dict, what: str) -> tuple[torch.Tensor, ...]:
        if set(group) != set(names):
            raise ValueError(f"train: resume: {what} has {sorted(group)}, expected {sorted(names)}")
        out = []
        for name in names:
            t = group[name]
            if tuple(t.shape) != expected[name]:
                raise ValueError(f"train: resume: {what}[{name!r}] has shape {tuple(t.shape)}, expected {expected[name]}")
            out.append(_pad(t.to(device, torch.float32), padded).reshape(padded, *expected[name][1:], *(
                (1,) if name == "b" else ())))
        return tuple(out)

    diverged = state.optim["diverged_step"]
    if tuple(diverged.shape) != (I,):
        raise ValueError(f"train: resume: optim['diverged_step'] has shape {tuple(diverged.shape)}, expected {(I,)}")
    return (layout(state.params, "params"), (layout(state.optim["m"], "optim['m']"), layout(state.optim["v"], "optim['v']")),
            _pad(diverged.to(device, torch.int32), padded))


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` [I, ...] with its last row repeated to ``rows`` rows."""
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])]) if rows > t.shape[0] else t.clone()


def _data_hidden(kind: str, W: torch.Tensor, dataset, instances: int, sparse: bool) -> torch.Tensor:
    """Hidden vectors of the training inputs: [I, m, T]."""
    with torch.no_grad():
        if sparse:
            return sparse_hidden(kind, W, dataset[0][:instances], dataset[1][:instances])
        return hidden(kind, W, dataset[:instances])
