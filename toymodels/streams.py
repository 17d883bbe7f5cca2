"""A point's data streams — training batches, the finite training set, held-out and selection
data — and :func:`sample`, which shows any of them as the trainer draws it.

Every stream is keyed per instance (toymodels/rng.py): the training stream and the training set
by the point's ``seed``; the held-out batch and the selection set by ``train.eval_seed``, so every
seed of a grid cell sees the same rows (common random numbers). Dense points draw a stream with
:func:`toymodels.data.feature_batch`, sparse ones with :func:`toymodels.sparse.draw`: the same
distribution, different draws.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import rng
from .config import PointSpec
from .data import Structure, density_vector, feature_batch
from .sparse import Tables, dense, draw

SELECT_BLOCK_ROWS = 1024
"""The selection set is drawn in blocks of this many rows: block j is step j of the selection
stream, so a larger selection set extends a smaller one."""

STREAMS = {"train": (rng.STREAM_TRAIN, rng.STREAM_SETS), "eval": (rng.STREAM_EVAL, rng.STREAM_EVAL_SETS),
           "select": (rng.STREAM_SELECT, rng.STREAM_SELECT_SETS),
           "dataset": (rng.STREAM_DATASET, rng.STREAM_DATASET_SETS)}
"""Data streams: training batches and the finite training set (``data.dataset_size`` rows, step 0),
keyed by each point's ``seed``; the held-out batch and the selection set, keyed by ``train.eval_seed``."""


def stream_keys(points: Sequence[PointSpec], stream: str,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The feature and set keys of ``points`` in one of :data:`STREAMS`: int32 [instances, 2, 1, 1] each."""
    seeds = [p.seed if stream in ("train", "dataset") else p.train.eval_seed for p in points]
    feature_stream, set_stream = STREAMS[stream]
    return rng.keys_tensor(seeds, feature_stream, device), rng.keys_tensor(seeds, set_stream, device)


def densities(points: Sequence[PointSpec], device: str | torch.device = "cpu") -> torch.Tensor:
    """Every point's density vector: float32 [instances, n_features]."""
    return torch.tensor(np.stack([density_vector(p.model, p.data) for p in points]), dtype=torch.float32,
                        device=device)


def draw_rows(structure: Structure, keys: torch.Tensor, set_keys: torch.Tensor, step: int, rows: int,
              density: torch.Tensor):
    """``rows`` rows of one step of a stream, as the trainer holds them: a dense feature-major batch
    float32 [I, n, rows], or for sparse points (feat, val) [I, rows, K] (toymodels/sparse.py)."""
    step_t = torch.tensor(step, dtype=torch.int32, device=keys.device)
    if structure.sparse:
        tables = Tables(density)
        return draw(structure, (tables.count_cdf, tables.cap, tables.feature_cdf), keys, step_t,
                    torch.arange(rows, dtype=torch.int32, device=keys.device), tables.slots)
    return feature_batch(structure, keys, set_keys, step_t, density.unsqueeze(-1), rows)


def sample(points: Sequence[PointSpec], step: int, batch_size: int, *, stream: str = "train",
           device: str | torch.device = "cpu") -> torch.Tensor:
    """The batch the trainer draws for ``points`` at ``step`` of ``stream``.

    stream "train": the training batch of that step; "dataset": the finite training set (step 0;
    ``data.dataset_size`` rows in the trainer); "eval": the held-out batch (always step 0,
    ``train.eval_batch_size`` rows in the trainer); "select": block ``step`` of the selection set
    (:data:`SELECT_BLOCK_ROWS` rows in the trainer).
    Returns float32 [instances, batch, n_features]. Points must share one data structure.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream: got {stream!r}; allowed: {', '.join(STREAMS)}")
    structure = Structure.of(points[0])
    keys, set_keys = stream_keys(points, stream, device)
    rows = draw_rows(structure, keys, set_keys, 0 if stream in ("eval", "dataset") else step, batch_size,
                     densities(points, device))
    x = dense(*rows, structure.n_features) if structure.sparse else rows
    return x.transpose(1, 2).contiguous()
