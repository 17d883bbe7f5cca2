"""Configuration dataclasses for one toy model: what it is, what data it sees, how it trains.

These are plain dataclasses (no Hydra, no Ray). The sweep service registers them as
structured-config schemas; a notebook user builds them directly. Validation lives in
``__post_init__`` and raises ``ValueError`` naming the field and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

MODEL_KINDS = ("linear", "relu_out", "relu_hidden", "abs")
CORRELATIONS = ("none", "correlated", "anticorrelated")
OPTIMIZERS = ("adamw", "adam")
INPUTS = ("auto", "dense", "sparse")
SCHEDULES = ("constant", "linear", "cosine")
MAX_VALUES_PER_STEP = 1 << 31
"""n_features × batch rows one step may draw per instance (toymodels.rng's 31-bit counter)."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {msg}")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


@dataclass
class ModelConfig:
    kind: str = "relu_out"
    """Architecture: linear | relu_out | relu_hidden (privileged basis) | abs (|x| computation)."""
    n_features: int = 5
    """n: number of input features (columns of W)."""
    n_hidden: int = 2
    """m: number of hidden dimensions (rows of W)."""
    l1_penalty: float = 0.0
    """λ of an L1 penalty on the hidden activations, the paper's λ (0 = off): the objective per
    example is (1/n)·(Σ_i I_i (x_i − x'_i)² + λ‖h‖₁), the paper's sum divided by n_features."""

    def __post_init__(self) -> None:
        _check(self.kind in MODEL_KINDS, "model.kind", f"got {self.kind!r}; allowed: {', '.join(MODEL_KINDS)}")
        _check(int(self.n_features) >= 1, "model.n_features", f"must be >= 1, got {self.n_features}")
        _check(int(self.n_hidden) >= 1, "model.n_hidden", f"must be >= 1, got {self.n_hidden}")
        _check(math.isfinite(self.l1_penalty) and self.l1_penalty >= 0, "model.l1_penalty",
               f"must be finite and >= 0, got {self.l1_penalty}")


@dataclass
class DataConfig:
    density: float = 1.0
    """p = 1 − S: probability that a feature is nonzero. In (0, 1]."""
    importance_decay: float = 1.0
    """Importance I_i = importance_decay**i (1.0 = uniform importance)."""
    importance_values: Optional[list[float]] = None
    """Explicit importance vector of length n_features; overrides importance_decay."""
    extra_importance: float = 1.0
    """Relative importance of the last feature (the phase diagrams' "extra" feature)."""
    extra_density: float = 1.0
    """Relative density of the last feature (its density is density·extra_density, capped at 1)."""
    density_values: Optional[list[float]] = None
    """Explicit per-feature density vector of length n_features; overrides density/extra_density."""
    correlation: str = "none"
    """Feature-set structure: none | correlated | anticorrelated (first n_sets·set_size features)."""
    n_sets: int = 0
    """Number of correlated/anticorrelated sets."""
    set_size: int = 2
    """Features per set."""
    anticorrelated_marginal: bool = False
    """Anticorrelated variant keeping each member's marginal density at p (set active w.p. k·p)."""
    density_exponent: float = 0.0
    """α of a power law of feature frequencies: p_i = density·(i+1)^−α, then clipped to
    [density_min, 1] (0 = every feature at ``density``). Ignored with density_values."""
    density_min: float = 0.0
    """Lower clip of the power-law densities."""
    importance_exponent: float = 0.0
    """β of a Zipf importance law: I_i is multiplied by (i+1)^−β (0 = off)."""
    normalize: bool = False
    """Rescale every input to unit L2 norm (Henighan et al. 2023); all-zero inputs stay zero."""
    dataset_size: Optional[int] = None
    """T: train on T fixed inputs, drawn once from the point's seed, as the full batch of every step
    (a finite dataset); null = a fresh batch every step. The held-out ``loss`` stays on fresh data."""

    def __post_init__(self) -> None:
        _check(0 < self.density <= 1, "data.density", f"must be in (0, 1], got {self.density}")
        _check(_positive(self.importance_decay), "data.importance_decay",
               f"must be finite and > 0, got {self.importance_decay}")
        _check(_positive(self.extra_importance), "data.extra_importance",
               f"must be finite and > 0, got {self.extra_importance}")
        _check(_positive(self.extra_density), "data.extra_density", f"must be finite and > 0, got {self.extra_density}")
        if self.importance_values is not None:
            _check(all(v >= 0 and math.isfinite(v) for v in self.importance_values),
                   "data.importance_values", "must be finite and >= 0")
        if self.density_values is not None:
            _check(all(0 <= v <= 1 for v in self.density_values), "data.density_values", "must be in [0, 1]")
        _check(self.correlation in CORRELATIONS, "data.correlation",
               f"got {self.correlation!r}; allowed: {', '.join(CORRELATIONS)}")
        _check(self.n_sets >= 0, "data.n_sets", f"must be >= 0, got {self.n_sets}")
        _check(self.set_size >= 1, "data.set_size", f"must be >= 1, got {self.set_size}")
        if self.correlation != "none":
            _check(self.n_sets >= 1, "data.n_sets", f"must be >= 1 when data.correlation={self.correlation}")
        _check(math.isfinite(self.density_exponent) and self.density_exponent >= 0, "data.density_exponent",
               f"must be finite and >= 0, got {self.density_exponent}")
        _check(0 <= self.density_min <= 1, "data.density_min", f"must be in [0, 1], got {self.density_min}")
        _check(math.isfinite(self.importance_exponent), "data.importance_exponent",
               f"must be finite, got {self.importance_exponent}")
        _check(self.dataset_size is None or self.dataset_size >= 1, "data.dataset_size",
               f"must be >= 1 or null, got {self.dataset_size}")


@dataclass
class TrainConfig:
    steps: int = 10_000
    """Optimiser steps (a fresh batch each step)."""
    batch_size: int = 1024
    """Training batch size per instance."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """Weight decay (decoupled for adamw, L2 added to the gradient for adam); negative values grow
    the weights (the strong-superposition regime of Liu, Liu & Gore 2025)."""
    optimizer: str = "adamw"
    """adamw | adam."""
    beta1: float = 0.9
    """Adam β₁."""
    beta2: float = 0.999
    """Adam β₂."""
    eps: float = 1e-8
    """Adam ε."""
    schedule: str = "constant"
    """Learning-rate schedule after warm-up: constant | linear (to 0) | cosine (to 0)."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to lr."""
    inputs: str = "dense"
    """How the engine draws inputs: dense (every feature of every row), sparse (only the active
    features, toymodels/sparse.py), or auto (sparse for independent features at low density,
    toymodels.data.sparse_inputs). Same distribution either way, different draws — so the default
    stays dense, which keeps the results of existing sweeps; the many-features experiments use auto."""
    eval_batch_size: int = 1024
    """Rows of the fixed held-out batch every checkpoint's loss is measured on."""
    eval_seed: int = 0
    """Seed of the evaluation data — the held-out batch and the selection set. Every point with
    the same eval_seed sees the same rows (common random numbers), so seeds are compared on the
    model, not on their batch."""
    selection_rows: int = 131_072
    """Monte Carlo rows of the selection estimate every point gets at the end of training (its
    ``selection_loss``, used for best-of-N; see toymodels/selection.py); a multiple of 1024."""
    init_scale: float = 1.0
    """Multiplier of the Xavier-normal std of W (and W2). Below 1 every feature starts small, so
    training meets the loss's saddle points one after another (the successive plateaus of the
    learning-dynamics experiments); the paper's notebook, which applies Xavier to the stacked
    [instances, n, m] tensor, starts at about √((n+m)/(m·(n+instances))) of the per-model std."""
    log_checkpoints: int = 30
    """Number of log-spaced checkpoints (resolve early dynamics)."""
    linear_checkpoints: int = 20
    """Number of linearly spaced checkpoints (resolve late training). Step 0 and the last are always in."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(_positive(self.lr), "train.lr", f"must be finite and > 0, got {self.lr}")
        _check(math.isfinite(self.weight_decay), "train.weight_decay", f"must be finite, got {self.weight_decay}")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer",
               f"got {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)")
        _check(_positive(self.eps), "train.eps", f"must be finite and > 0, got {self.eps}")
        _check(self.inputs in INPUTS, "train.inputs", f"got {self.inputs!r}; allowed: {', '.join(INPUTS)}")
        _check(self.schedule in SCHEDULES, "train.schedule",
               f"got {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        _check(0 <= self.warmup_steps <= self.steps, "train.warmup_steps", "must be in [0, train.steps]")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _check(self.eval_seed >= 0, "train.eval_seed", f"must be >= 0, got {self.eval_seed}")
        _check(self.selection_rows >= 1024 and self.selection_rows % 1024 == 0, "train.selection_rows",
               f"must be a positive multiple of 1024, got {self.selection_rows}")
        _check(math.isfinite(self.init_scale) and self.init_scale > 0, "train.init_scale",
               f"must be finite and > 0, got {self.init_scale}")
        _check(self.log_checkpoints >= 0 and self.linear_checkpoints >= 0, "train.*_checkpoints", "must be >= 0")


@dataclass
class PointSpec:
    """One model to train: its architecture, data, training settings and seed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data distribution and importance."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""
    seed: int = 0
    """Seed of this instance: its initial weights and its whole data stream derive from it alone."""

    def __post_init__(self) -> None:
        n = self.model.n_features
        if self.data.importance_values is not None:
            _check(len(self.data.importance_values) == n, "data.importance_values",
                   f"length {len(self.data.importance_values)} != model.n_features {n}")
        if self.data.density_values is not None:
            _check(len(self.data.density_values) == n, "data.density_values",
                   f"length {len(self.data.density_values)} != model.n_features {n}")
        if self.data.correlation != "none":
            _check(self.data.n_sets * self.data.set_size <= n, "data.n_sets",
                   f"n_sets·set_size = {self.data.n_sets * self.data.set_size} exceeds model.n_features {n}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        rows = max(self.train.batch_size, self.train.eval_batch_size, 1024)
        _check(n * rows <= MAX_VALUES_PER_STEP, "train.batch_size",
               f"model.n_features × rows = {n * rows} exceeds {MAX_VALUES_PER_STEP} values per step "
               "(the random stream's counter); use a smaller batch")
        d = self.data
        if d.dataset_size is not None and self.train.inputs != "sparse":
            _check(n * d.dataset_size <= MAX_VALUES_PER_STEP, "data.dataset_size",
                   f"model.n_features × data.dataset_size = {n * d.dataset_size} exceeds {MAX_VALUES_PER_STEP} "
                   "values (the dense stream's counter); use train.inputs=sparse or a smaller dataset")
        if self.train.inputs == "sparse":
            _check(d.correlation == "none", "train.inputs",
                   "sparse inputs need independent features (data.correlation=none)")
            top = max(d.density_values) if d.density_values is not None else \
                max(d.density, d.density_min, min(1.0, d.density * d.extra_density))
            _check(top < 1, "train.inputs", f"sparse inputs need every density below 1 (the largest is {top})")
