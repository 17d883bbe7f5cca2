"""When a run takes its checkpoints, and its learning rate at every step."""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig


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
