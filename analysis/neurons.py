"""Privileged-basis pictures (relu_hidden, abs): which features each hidden neuron represents.

For ``relu_hidden`` the inputs are non-negative, so only positive weights can drive a neuron;
for ``abs`` inputs are signed and |W1| counts. Each neuron is rescaled so that its largest
weight is 1 (the paper does this for abs: W1 row ×α, W2 column ×1/α).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import GeometryConfig

NEURON_KINDS = ("relu_hidden", "abs")


@dataclass(frozen=True)
class NeuronCounts:
    """How a model's hidden neurons divide up."""

    monosemantic: int
    """Neurons representing exactly one feature."""
    polysemantic: int
    """Neurons representing two or more features."""
    dead: int
    """Neurons whose largest driving weight is below ``dead_weight``."""


def rescale(W: np.ndarray, W2: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Scale each neuron (row of ``W`` [n_hidden, n_features]) so its largest |weight| is 1.

    ``W2`` [n_features, n_hidden] gets the reciprocal column scale, so the network is unchanged.
    """
    peak = np.abs(W).max(axis=1, keepdims=True)
    alpha = np.where(peak > 0, 1.0 / np.where(peak > 0, peak, 1.0), 1.0)
    return W * alpha, (None if W2 is None else W2 / alpha.T)


def drive(W: np.ndarray, kind: str) -> np.ndarray:
    """How strongly each feature can drive each neuron [n_hidden, n_features]."""
    return np.abs(W) if kind == "abs" else np.clip(W, 0.0, None)


def neuron_features(W: np.ndarray, kind: str, cfg: GeometryConfig = GeometryConfig()) -> np.ndarray:
    """Boolean [n_hidden, n_features]: neuron j represents feature i; dead neurons have none."""
    D = drive(np.asarray(W, dtype=np.float64), kind)
    peak = D.max(axis=1, keepdims=True)
    return (D >= cfg.polysemantic_fraction * peak) & (peak >= cfg.dead_weight)


def count_neurons(W: np.ndarray, kind: str, cfg: GeometryConfig = GeometryConfig()) -> NeuronCounts:
    """Count mono-, polysemantic and dead neurons of ``W`` [n_hidden, n_features]."""
    per = neuron_features(W, kind, cfg).sum(axis=1)
    return NeuronCounts(int(np.sum(per == 1)), int(np.sum(per >= 2)), int(np.sum(per == 0)))
