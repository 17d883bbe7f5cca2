"""Synthetic data of the paper: sparse features, correlated and anticorrelated sets, importance.

Inside the trainer a batch is laid out feature-major, ``[instances, n_features, batch]``, which
makes the batched matrix products fastest; :func:`sample` returns the usual
``[instances, batch, n_features]``.

- Independent features: x_i = 0 with probability 1 − p_i, else Uniform[0, 1]
  (Uniform[−1, 1] for the ``abs`` task). One uniform draw u per element gives both:
  x = u/p if u < p else 0.
- Correlated set: all members share one on/off draw; active members take independent values.
- Anticorrelated set: the set is zero with probability 1 − p, otherwise exactly one member,
  chosen uniformly, is nonzero (marginal density p/k). ``anticorrelated_marginal`` activates
  the set with probability min(1, k·p) instead, keeping each member's marginal density at p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import rng
from .config import DataConfig, ModelConfig, PointSpec


def importance_vector(model: ModelConfig, data: DataConfig) -> np.ndarray:
    """Importance I_i of each feature, shape [n_features]."""
    n = model.n_features
    if data.importance_values is not None:
        imp = np.asarray(data.importance_values, dtype=np.float64)
    else:
        imp = data.importance_decay ** np.arange(n, dtype=np.float64)
    imp = imp.copy()
    imp[-1] *= data.extra_importance
    return imp


def density_vector(model: ModelConfig, data: DataConfig) -> np.ndarray:
    """Density p_i = 1 − S_i of each feature, shape [n_features]."""
    n = model.n_features
    if data.density_values is not None:
        return np.asarray(data.density_values, dtype=np.float64).copy()
    p = np.full(n, data.density, dtype=np.float64)
    p[-1] = min(1.0, data.density * data.extra_density)
    return p


@dataclass(frozen=True)
class Structure:
    """What a pack of instances shares about its data: shapes and set structure."""

    n_features: int
    signed: bool
    correlation: str
    n_sets: int
    set_size: int
    anticorrelated_marginal: bool

    @classmethod
    def of(cls, point: PointSpec) -> "Structure":
        d = point.data
        corr = d.correlation if d.n_sets > 0 else "none"
        return cls(point.model.n_features, point.model.kind == "abs", corr,
                   d.n_sets if corr != "none" else 0, d.set_size if corr != "none" else 1,
                   bool(d.anticorrelated_marginal) and corr == "anticorrelated")


def feature_batch(structure: Structure, keys: torch.Tensor, set_keys: torch.Tensor, step: torch.Tensor,
                  density: torch.Tensor, rows: int, blocks: int = 1) -> torch.Tensor:
    """``blocks`` consecutive steps' batches of ``rows`` rows per instance, feature-major.

    keys, set_keys: int32 [instances, 2, 1, 1] (:func:`rng.keys_tensor`); step: int32 0-d tensor,
    the first step; density: float32 [instances, n_features, 1].
    Returns float32 [instances, n_features, blocks · rows]: block j holds step ``step + j``'s
    batch, so a batch never depends on how many blocks are drawn with it.
    """
    n = structure.n_features
    device = keys.device
    steps = step + torch.arange(blocks, dtype=torch.int32, device=device)
    counter = torch.arange(n * rows, dtype=torch.int32, device=device).view(1, n, 1, rows)
    u = rng.uniform(counter, rng.step_keys(keys, steps)).view(-1, n, blocks * rows)
    x = torch.where(u < density, u / density, 0.0)
    if structure.correlation != "none":
        k, s = structure.set_size, structure.n_sets
        members = s * k
        set_counter = torch.arange(s * rows, dtype=torch.int32, device=device).view(1, s, 1, rows)
        us = rng.uniform(set_counter, rng.step_keys(set_keys, steps)).view(-1, s, blocks * rows)
        us = us.repeat_interleave(k, dim=1)                                   # [I, members, B]
        p = density[:, :members]
        value = u[:, :members]
        if structure.correlation == "correlated":
            member_x = torch.where(us < p, value, 0.0)
        else:
            q = torch.clamp(p * k, max=1.0) if structure.anticorrelated_marginal else p
            chosen = torch.clamp(torch.floor(us / q * k), max=k - 1)
            position = (torch.arange(members, device=device) % k).view(1, members, 1)
            member_x = torch.where((us < q) & (chosen == position), value, 0.0)
        x = torch.cat([member_x, x[:, members:]], dim=1)
    if structure.signed:
        x = torch.where(x != 0, 2.0 * x - 1.0, 0.0)
    return x


SELECT_BLOCK_ROWS = 1024
"""The selection set is drawn in blocks of this many rows: block j is step j of the selection
stream, so a larger selection set extends a smaller one."""

STREAMS = {"train": (rng.STREAM_TRAIN, rng.STREAM_SETS), "eval": (rng.STREAM_EVAL, rng.STREAM_EVAL_SETS),
           "select": (rng.STREAM_SELECT, rng.STREAM_SELECT_SETS)}
"""Data streams: training batches (keyed by each point's ``seed``), the held-out batch and the
selection set (both keyed by ``train.eval_seed``, so every seed of a grid cell sees the same rows)."""


def stream_keys(points: Sequence[PointSpec], stream: str,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The feature and set keys of ``points`` in one of :data:`STREAMS`: int32 [instances, 2, 1, 1] each."""
    seeds = [p.seed if stream == "train" else p.train.eval_seed for p in points]
    feature_stream, set_stream = STREAMS[stream]
    return rng.keys_tensor(seeds, feature_stream, device), rng.keys_tensor(seeds, set_stream, device)


def sample(points: Sequence[PointSpec], step: int, batch_size: int, *, stream: str = "train",
           device: str | torch.device = "cpu") -> torch.Tensor:
    """The batch the trainer draws for ``points`` at ``step`` of ``stream``.

    stream "train": the training batch of that step; "eval": the held-out batch (always step 0,
    ``train.eval_batch_size`` rows in the trainer); "select": block ``step`` of the selection set
    (:data:`SELECT_BLOCK_ROWS` rows in the trainer).
    Returns float32 [instances, batch, n_features]. Points must share one data structure.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream: got {stream!r}; allowed: {', '.join(STREAMS)}")
    structure = Structure.of(points[0])
    keys, set_keys = stream_keys(points, stream, device)
    density = torch.tensor(np.stack([density_vector(p.model, p.data) for p in points]),
                           dtype=torch.float32, device=device).unsqueeze(-1)
    step_t = torch.tensor(0 if stream == "eval" else step, dtype=torch.int32, device=device)
    x = feature_batch(structure, keys, set_keys, step_t, density, batch_size)
    return x.transpose(1, 2).contiguous()
