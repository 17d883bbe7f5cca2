"""toymodels: the models, data, metrics and vectorised trainer of "Toy Models of Superposition".

Imports neither ray, hydra nor wandb. See docs/models.md. The names below are loaded on first
use, so ``import toymodels.config`` or ``toymodels.metrics`` does not load torch.
"""

import importlib

_WHERE = {
    "DataConfig": "config", "ModelConfig": "config", "PointSpec": "config", "TrainConfig": "config",
    "density_vector": "data", "importance_vector": "data", "sample": "streams",
    "feature_metrics": "metrics",
    "forward": "models", "loss": "models",
    "choose_pack_size": "sizing",
    "Checkpoint": "trainer", "TrainResult": "trainer", "TrainState": "trainer", "checkpoint_steps": "trainer",
    "lr_multiplier": "trainer", "pack_key": "trainer", "train": "trainer", "tune_allocator": "trainer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'toymodels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
