"""toymodels: the models, data, metrics and vectorised trainer of "Toy Models of Superposition".

Imports neither ray, hydra nor wandb. See docs/models.md.
"""

from .config import DataConfig, ModelConfig, PointSpec, TrainConfig
from .data import density_vector, importance_vector
from .metrics import feature_metrics
from .models import forward, loss
from .streams import sample
from .trainer import (Checkpoint, TrainResult, checkpoint_steps, lr_multiplier, pack_key, train,
                      tune_allocator)

__all__ = [
    "Checkpoint", "DataConfig", "ModelConfig", "PointSpec", "TrainConfig", "TrainResult",
    "checkpoint_steps", "density_vector", "feature_metrics", "forward", "importance_vector",
    "loss", "lr_multiplier", "pack_key", "sample", "train", "tune_allocator",
]
