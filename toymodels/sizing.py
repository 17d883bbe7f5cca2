"""How many instances the trainer computes at once (a block), and how many a sweep's trial trains (a pack).

A step touches, per instance, its batch, hidden and output activations and the output gradient
(:func:`step_bytes`). When a whole pack is one tensor, each of the step's passes streams the
pack's activations through main memory (≈ 270 MB at 1,000 instances of n=20, batch 1024) and the
step is bound by memory bandwidth. The trainer instead runs the step on blocks of instances,
each small enough (:data:`BLOCK_BYTES`) that its activations stay in cache between the passes,
and on a CPU it runs the blocks on ``torch.get_num_threads()`` threads at once, one
single-threaded block per thread (no barrier inside a step; see toymodels/trainer.py).
Instances are independent, so a block's results are those of the whole pack. On a GPU the whole
pack is one block.

:func:`choose_pack_size` sizes a sweep's trials from a model of memory and throughput.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .config import PointSpec
from .schedule import checkpoint_steps
from .sparse import chunk_rows

BLOCK_BYTES = 16 << 20
"""Step activations of one block. Measured at n=20, m=5, batch 1024 on the reference machine
(2 MB L2 per core; docs/performance.md): 8–64 instances per block (2–17 MB) run at the same
speed, 240 (64 MB) 10–20 % slower, 960 (255 MB) 40 % slower."""
MIN_BLOCK_EAGER = 256
"""Fewest instances per block for eager steps, whose every operation costs ~5–10 µs to dispatch."""


def step_bytes(kind: str, n_features: int, n_hidden: int, rows: int, sparse: bool = False) -> int:
    """Bytes of one instance's step activations: batch, output, output gradient [n, rows] and hidden [m, rows]
    (two hidden tensors for the models with a ReLU on it), float32. Sparse inputs: those of one
    chunk of rows (toymodels/sparse.py), the batch itself being negligible."""
    hidden = 2 if kind in ("relu_hidden", "abs") else 1
    if sparse:
        rows = chunk_rows(n_features, rows)
    return 4 * rows * (3 * n_features + hidden * n_hidden)


def block_size(instances: int, per_instance_bytes: int, device: torch.device, compiled: bool,
               threads: Optional[int] = None) -> int:
    """Instances per block for a pack of ``instances``. On a CPU: as many as :data:`BLOCK_BYTES`
    holds, but few enough that each of the ``threads`` (default ``torch.get_num_threads()``) gets a
    block; eager steps at least :data:`MIN_BLOCK_EAGER`; at most the pack. On a GPU: the pack."""
    if device.type != "cpu":
        return instances
    if not compiled:
        return max(1, min(instances, max(BLOCK_BYTES // max(per_instance_bytes, 1), MIN_BLOCK_EAGER)))
    share = math.ceil(instances / (threads or torch.get_num_threads()))
    return max(1, min(share, BLOCK_BYTES // max(per_instance_bytes, 1)))


def even_blocks(instances: int, block: int) -> tuple[int, int]:
    """(blocks, size): the fewest blocks of at most ``block`` instances, all of one size (one compiled
    shape); ``blocks × size − instances`` (< blocks) padding instances complete the last one."""
    blocks = math.ceil(instances / block)
    return blocks, math.ceil(instances / blocks)


def threads_for(blocks: int, block_bytes: int, threads: int, device: torch.device, compiled: bool,
                sparse: bool = False) -> tuple[int, int]:
    """(workers, intra-op threads) for running ``blocks`` blocks of ``block_bytes`` activations.

    Compiled on a CPU: one single-threaded block per worker thread, so no thread waits for
    another inside a step (under load, the barriers of multi-threaded kernels on small tensors
    cost more than they give); a single block uses all ``threads`` only when it is larger than
    :data:`BLOCK_BYTES` and its inputs are dense (the sparse step's scatter is deterministic only
    on one thread). Eager, and on a GPU: blocks one after another, with ``threads``.
    """
    if device.type != "cpu" or not compiled:
        return 1, threads
    if blocks > 1:
        return min(threads, blocks), 1
    return 1, threads if block_bytes > BLOCK_BYTES and not sparse else 1


# ----------------------------------------------------------------------------- packs for a sweep

CPU_OPS_PER_S = 2.3e10
"""Arithmetic the fused step sustains per CPU thread (flops of its products plus elementwise
operations, :func:`step_ops`), measured on the reference machine at n=20, m=5 (≈ 10,000
model-steps/s per thread). Used only to estimate how long a trial takes."""
GPU_OPS_PER_S = 1e13
"""The same for one GPU — an assumption (no GPU has been measured yet: docs/performance.md)."""
TRIAL_SECONDS = 900.0
"""Longest training a trial should hold (estimated): what an interrupted sweep can lose per trial."""
MAX_TRIALS = 500
"""Most trials a group of points is split into: Ray Tune's per-trial costs grow with thousands."""
MEMORY_FRACTION = 0.5
"""Fraction of a worker's memory share that its pack may use."""
ELEMENTWISE_OPS = 60
"""Elementwise operations per input value of a step (hash, mask, output, gradients), estimated
from the compiled step's code."""


def step_ops(kind: str, n_features: int, n_hidden: int, rows: int) -> float:
    """Operations of one model-step: five (six for ``abs``) m × n × rows products, and elementwise work."""
    products = 6 if kind == "abs" else 5
    return rows * (2.0 * products * n_features * n_hidden + ELEMENTWISE_OPS * n_features)


def point_bytes(kind: str, n_features: int, n_hidden: int, rows: int, checkpoints: int, on_gpu: bool) -> int:
    """Memory one point of a pack holds: parameters with Adam's two moments and per-instance
    constants; its checkpoints' arrays (a sweep's trial keeps them until it commits); on a GPU,
    where the whole pack is one block, also twice its step activations."""
    weights = n_hidden * n_features * (2 if kind == "abs" else 1) + n_features
    state = 4 * (3 * weights + 3 * n_features + 8)
    per_checkpoint = 4 * (weights + 5 * n_features + 8)
    return state + checkpoints * per_checkpoint + (2 * step_bytes(kind, n_features, n_hidden, rows) if on_gpu else 0)


@dataclass
class PackChoice:
    """How many points one trial trains, and why."""

    size: int
    """Points per trial (packs of a group differ by at most one)."""
    trials: int
    """Trials the group of points makes."""
    reason: str
    """The bound that decided, in words."""


def choose_pack_size(point: PointSpec, points: int, workers: int, *, device: str = "cpu",
                     threads_per_worker: int = 1, memory_bytes: Optional[float] = None) -> PackChoice:
    """Pack size for ``points`` points that share ``point``'s pack_key, run by ``workers`` parallel trials.

    The smallest of three bounds; then the trials are made a multiple of ``workers`` (when there
    are more than ``workers``) and the points spread evenly over them:
    - balance: every worker gets one trial (⌈points / workers⌉) — with cache-sized blocks a
      larger pack is no faster per model on a CPU, so fewer trials only save per-trial costs;
    - memory: :data:`MEMORY_FRACTION` of each worker's share of ``memory_bytes`` (default: this
      machine's RAM) over :func:`point_bytes`;
    - duration: at most :data:`TRIAL_SECONDS` of training per trial at the rate
      :func:`step_ops` and :data:`CPU_OPS_PER_S` (or :data:`GPU_OPS_PER_S`) predict, but packs
      large enough to make at most :data:`MAX_TRIALS` trials.
    """
    if points < 1 or workers < 1:
        raise ValueError(f"choose_pack_size: points and workers must be >= 1, got {points} and {workers}")
    kind, n, m = point.model.kind, point.model.n_features, point.model.n_hidden
    cfg = point.train
    on_gpu = device != "cpu"
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_point = point_bytes(kind, n, m, cfg.batch_size, len(checkpoint_steps(cfg)), on_gpu)
    ops_per_s = GPU_OPS_PER_S if on_gpu else CPU_OPS_PER_S * threads_per_worker
    rate = ops_per_s / step_ops(kind, n, m, cfg.batch_size)          # model-steps/s of one worker
    minutes = f"{TRIAL_SECONDS / 60:.0f} min"
    duration = int(TRIAL_SECONDS * rate // cfg.steps)
    fewest = math.ceil(points / MAX_TRIALS)
    if duration >= fewest:
        why = f"≤ {minutes} of training per trial"
    else:
        duration, why = fewest, f"at most {MAX_TRIALS} trials (each trains longer than {minutes})"
    bounds = [
        (math.ceil(points / workers), f"one trial per worker ({points} points, {workers} workers)"),
        (int(MEMORY_FRACTION * memory_bytes / workers // per_point),
         f"memory: {per_point / 2**20:.2f} MiB per point, {memory_bytes / workers / 2**30:.1f} GiB per worker"),
        (duration, f"{why} at ~{rate:,.0f} model-steps/s per worker (estimated)"),
    ]
    size, reason = min(bounds, key=lambda bound: bound[0])
    trials = math.ceil(points / max(1, size))
    if trials > workers:                  # whole waves: no worker idles while another runs a last trial
        trials = min(points, math.ceil(trials / workers) * workers)
    size = math.ceil(points / trials)
    return PackChoice(size, trials, f"{size} per trial, {trials} trial{'s' * (trials > 1)}: {reason}")
