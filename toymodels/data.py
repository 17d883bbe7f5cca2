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


def feature_batch(structure: Structure, keys: torch.Tensor, set_keys: torch.Tensor,
                  offset: torch.Tensor, set_offset: torch.Tensor, density: torch.Tensor,
                  batch: int) -> torch.Tensor:
    """One batch per instance, feature-major.

    keys, set_keys: int32 [instances, 2, 1, 1]; offset, set_offset: int32 scalars (the step's
    counters); density: float32 [instances, n_features, 1].
    Returns float32 [instances, n_features, batch].
    """
    n = structure.n_features
    device = keys.device
    counter = torch.arange(n * batch, dtype=torch.int32, device=device).view(1, n, batch) + offset
    u = rng.uniform(counter, keys)
    x = torch.where(u < density, u / density, 0.0)
    if structure.correlation != "none":
        k, s = structure.set_size, structure.n_sets
        members = s * k
        set_counter = torch.arange(s * batch, dtype=torch.int32, device=device).view(1, s, batch) + set_offset
        us = rng.uniform(set_counter, set_keys).repeat_interleave(k, dim=1)  # [I, members, B]
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


def sample(points: Sequence[PointSpec], step: int, batch_size: int, *, eval: bool = False,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """The batch the trainer draws for ``points`` at ``step`` (or their held-out batch).

    Returns float32 [instances, batch, n_features]. Points must share one data structure.
    """
    structure = Structure.of(points[0])
    seeds = [p.seed for p in points]
    keys = rng.keys_tensor(seeds, rng.STREAM_EVAL if eval else rng.STREAM_TRAIN, device)
    set_keys = rng.keys_tensor(seeds, rng.STREAM_EVAL_SETS if eval else rng.STREAM_SETS, device)
    density = torch.tensor(np.stack([density_vector(p.model, p.data) for p in points]),
                           dtype=torch.float32, device=device).unsqueeze(-1)
    step = 0 if eval else step
    n, s = structure.n_features, max(structure.n_sets, 1)
    offset = torch.tensor(rng.counter_offset(step, n * batch_size), dtype=torch.int32, device=device)
    set_offset = torch.tensor(rng.counter_offset(step, s * batch_size), dtype=torch.int32, device=device)
    x = feature_batch(structure, keys, set_keys, offset, set_offset, density, batch_size)
    return x.transpose(1, 2).contiguous()
