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
        i = np.arange(n, dtype=np.float64)
        imp = data.importance_decay ** i * (i + 1) ** -data.importance_exponent
    imp = imp.copy()
    imp[-1] *= data.extra_importance
    return imp


def density_vector(model: ModelConfig, data: DataConfig) -> np.ndarray:
    """Density p_i = 1 − S_i of each feature, shape [n_features]."""
    n = model.n_features
    if data.density_values is not None:
        return np.asarray(data.density_values, dtype=np.float64).copy()
    p = data.density * np.arange(1, n + 1, dtype=np.float64) ** -data.density_exponent
    p = np.clip(p, data.density_min, 1.0)
    p[-1] = min(1.0, p[-1] * data.extra_density)
    return p


SPARSE_MAX_MEAN_DENSITY = 0.01
"""``train.inputs=auto`` draws sparse inputs when the features are independent, every density is
below 1, there are at least :data:`SPARSE_MIN_FEATURES` of them and their mean density is at most
this (docs/performance.md: where the sparse path is faster)."""
SPARSE_MIN_FEATURES = 256


def sparse_inputs(point: PointSpec) -> bool:
    """Whether ``point`` is trained on sparse inputs (``train.inputs``, with ``auto`` resolved)."""
    if point.train.inputs != "auto":
        return point.train.inputs == "sparse"
    p = density_vector(point.model, point.data)
    return (point.data.correlation == "none" and point.model.n_features >= SPARSE_MIN_FEATURES
            and float(p.max()) < 1.0 and float(p.mean()) <= SPARSE_MAX_MEAN_DENSITY)


@dataclass(frozen=True)
class Structure:
    """What a pack of instances shares about its data: shapes, set structure, how inputs are drawn."""

    n_features: int
    signed: bool
    correlation: str
    n_sets: int
    set_size: int
    anticorrelated_marginal: bool
    normalize: bool = False
    """Inputs rescaled to unit norm."""
    sparse: bool = False
    """Inputs drawn as their active features (toymodels/sparse.py)."""
    dataset_size: int = 0
    """Rows of the finite training set (0: a fresh batch every step)."""

    @classmethod
    def of(cls, point: PointSpec) -> "Structure":
        d = point.data
        corr = d.correlation if d.n_sets > 0 else "none"
        return cls(point.model.n_features, point.model.kind == "abs", corr,
                   d.n_sets if corr != "none" else 0, d.set_size if corr != "none" else 1,
                   bool(d.anticorrelated_marginal) and corr == "anticorrelated", bool(d.normalize),
                   sparse_inputs(point), d.dataset_size or 0)


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
    if structure.normalize:
        x = x / torch.clamp(torch.linalg.vector_norm(x, dim=1, keepdim=True), min=NORM_FLOOR)
    return x


NORM_FLOOR = 1e-30
"""Inputs are divided by max(‖x‖, this) when normalised, so all-zero rows stay zero."""
