"""Structured-config schemas for the sweep service, registered in Hydra's ConfigStore.

The model/data/train groups reuse the trainer's own dataclasses (`toymodels.config`); this
module adds what only a sweep needs: its name and grid options, W&B, and Ray. Typos and wrong
types fail at compose time; value checks live in each dataclass's ``__post_init__`` and raise
``ValueError("key: message")`` through the trainer's own helper (``toymodels.config._check``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from toymodels.config import DataConfig, ModelConfig, TrainConfig, _check

WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_RUNS = ("auto", "point", "trial")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SweepConfig:
    name: Optional[str] = None
    """Sweep name: its directory under `store` and its W&B group. Default: the experiment's name."""
    name_suffix: str = ""
    """Appended to the name (debug=smoke sets "-smoke" so a smoke run never mixes with the real one)."""
    seeds: int = 1
    """Seeds per grid cell (best-of-N fits); seed_index 0 … seeds−1."""
    base_seed: int = 0
    """Seed of seed_index 0; a point's seed is base_seed + seed_index, so a rerun gives the same points."""
    points_per_trial: Union[int, str] = "auto"
    """Most models trained together in one Ray Tune trial (one vectorised trainer call), or auto:
    chosen per group of packable points by ``toymodels.choose_pack_size`` (the plan prints why)."""
    max_points: int = 20_000
    """Refuse a grid with more points unless this is raised to confirm it."""
    max_values_per_key: Optional[int] = None
    """Keep at most this many values of each swept key, evenly spaced, ends kept (debug=smoke sets it)."""
    weights_history_max_bytes: int = 4_000_000
    """Store W, b (and W2) at every checkpoint while one point's weights × checkpoints take at most
    this many bytes (E5 at full size, n=400, m=30, 49 checkpoints: 2.4 MB); above it, and at 0,
    only the final weights are stored."""

    checkpoint_every_s: Optional[float] = 300.0
    """Seconds between saves of a trial's training state (parameters, optimiser moments, step) as a Ray
    Tune checkpoint, at the trainer's checkpoint steps; a retried trial, or the same trial of a later
    run of the sweep, continues from its last save. 0: at every checkpoint step; null: never."""
    lease_ttl_s: float = 60.0
    """Object stores only: seconds the driver's lease lasts unless renewed (every third of it). After
    a driver is killed, the sweep can be resumed once its lease has expired."""

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, "sweep.seeds", f"must be >= 1, got {self.seeds}")
        _check(self.checkpoint_every_s is None or (math.isfinite(self.checkpoint_every_s)
                                                   and self.checkpoint_every_s >= 0),
               "sweep.checkpoint_every_s", f"must be seconds >= 0 or null, got {self.checkpoint_every_s}")
        _check(math.isfinite(self.lease_ttl_s) and self.lease_ttl_s >= 5, "sweep.lease_ttl_s",
               f"must be a number of seconds >= 5, got {self.lease_ttl_s}")
        _check(self.base_seed >= 0, "sweep.base_seed", f"must be >= 0, got {self.base_seed}")
        _check(self.points_per_trial == "auto" or (isinstance(self.points_per_trial, int) and self.points_per_trial >= 1),
               "sweep.points_per_trial", f"must be auto or an integer >= 1, got {self.points_per_trial!r}")
        _check(self.max_points >= 1, "sweep.max_points", f"must be >= 1, got {self.max_points}")
        _check(self.weights_history_max_bytes >= 0, "sweep.weights_history_max_bytes",
               f"must be >= 0, got {self.weights_history_max_bytes}")
        _check(self.max_values_per_key is None or self.max_values_per_key >= 1,
               "sweep.max_values_per_key", f"must be >= 1 or null, got {self.max_values_per_key}")
        if self.name is not None:
            _check(is_safe_name(self.name), "sweep.name",
                   f"got {self.name!r}; use letters, digits and . _ - (no slashes)")
        _check(self.name_suffix == "" or is_safe_name(self.name_suffix), "sweep.name_suffix",
               f"got {self.name_suffix!r}; use letters, digits and . _ -")


@dataclass
class WandbConfig:
    mode: str = "auto"
    """online | offline | disabled | auto (online when logged in to W&B, offline otherwise)."""
    project: str = "tms-sweeps"
    """W&B project; each sweep is a group in it."""
    entity: Optional[str] = None
    """W&B entity (user or team); null = the logged-in user's default."""
    dir: Optional[str] = None
    """Local directory for W&B run files; null = the sweep directory (offline runs land in its wandb/)."""
    runs: str = "auto"
    """point: one W&B run per point (its settings as config, its loss, D* and D_i curves) | trial: one run
    per trial (a pack of points: histograms and tables) | auto: point up to max_point_runs points, else trial."""
    max_point_runs: int = 1000
    """Most points of a sweep that get one W&B run each (auto falls back to trial runs above it; W&B
    advises keeping a project well under 100,000 runs and limits how fast runs are made)."""

    def __post_init__(self) -> None:
        _check(self.mode in WANDB_MODES, "wandb.mode", f"got {self.mode!r}; allowed: {', '.join(WANDB_MODES)}")
        _check(self.runs in WANDB_RUNS, "wandb.runs", f"got {self.runs!r}; allowed: {', '.join(WANDB_RUNS)}")
        _check(self.max_point_runs >= 0, "wandb.max_point_runs", f"must be >= 0, got {self.max_point_runs}")


@dataclass
class RayConfig:
    address: Optional[str] = None
    """Ray cluster to use (e.g. "auto", "10.0.0.5:6379"); null = an embedded local Ray started and stopped by the command."""
    host: str = "127.0.0.1"
    """Address the embedded local Ray binds to; loopback unless you need other machines to reach it."""
    num_cpus: Optional[int] = None
    """CPUs of the embedded local Ray (null = all of this machine's)."""
    num_gpus: Optional[int] = None
    """GPUs of the embedded local Ray (null = all detected)."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial; the trainer uses that many threads (at least 1)."""
    gpus_per_trial: float = 0.0
    """GPUs per trial; fractions share a GPU (0.25 = four trials per GPU; it schedules, it does not cap memory)."""
    max_concurrent_trials: Optional[int] = None
    """Most trials running at once (null = as many as resources allow)."""
    max_failures: int = 2
    """Retries of a failed trial before its points are recorded as failed."""
    reuse_actors: bool = True
    """Reuse Ray actors between trials (saves ~1 s per trial)."""
    device: str = "auto"
    """Trainer device: auto (cuda when Ray assigned a GPU and torch sees one) | cpu | cuda."""
    compile: Optional[bool] = None
    """torch.compile the trainer's step: null = when it works, true/false to force."""
    wait_for_resources_s: float = 0.0
    """Seconds to wait for nodes that can run a trial (CPUs, GPUs, memory) to join the cluster before
    refusing the sweep: set it where workers start with the job (KubeRay, SLURM), e.g. 600."""
    inject_failures: int = 0
    """Fault injection for tests and drills: a trial raises on its first k attempts, after staging part of its rows."""
    inject_failures_trials: Optional[int] = None
    """How many trials (the first by trial key) the injected failures hit; null = every trial."""

    def __post_init__(self) -> None:
        _check(self.cpus_per_trial > 0, "ray.cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        _check(self.gpus_per_trial >= 0, "ray.gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        _check(self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(), "ray.gpus_per_trial",
               f"fractions must be <= 1 (got {self.gpus_per_trial}); above 1 use whole GPUs")
        _check(self.max_failures >= 0, "ray.max_failures", f"must be >= 0, got {self.max_failures}")
        _check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
               "ray.max_concurrent_trials", "must be >= 1 or null")
        _check(self.device in DEVICES, "ray.device", f"got {self.device!r}; allowed: {', '.join(DEVICES)}")
        _check(math.isfinite(self.wait_for_resources_s) and self.wait_for_resources_s >= 0,
               "ray.wait_for_resources_s", f"must be a number of seconds >= 0, got {self.wait_for_resources_s}")
        _check(self.inject_failures >= 0, "ray.inject_failures", "must be >= 0")
        _check(self.inject_failures_trials is None or self.inject_failures_trials >= 0,
               "ray.inject_failures_trials", "must be >= 0 or null")
        _check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", "must be >= 1 or null")
        _check(self.num_gpus is None or self.num_gpus >= 0, "ray.num_gpus", "must be >= 0 or null")


@dataclass
class Config:
    """The whole composed configuration (conf/config.yaml merges onto it)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture of every point (swept keys vary it per point)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data distribution and importance."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Name, seeds and packing of the sweep."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Experiment tracking."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where and how trials run."""
    store: str = "runs"
    """Root of the Parquet store: a local path or a pyarrow-filesystem URI (shared storage on a cluster)."""

    def __post_init__(self) -> None:
        _check(self.store.strip() != "", "store", "must be a path or a URI (e.g. runs, /shared/runs, s3://bucket/runs), got ''")


def is_safe_name(name: str) -> bool:
    """A name that is one path component: letters, digits and . _ - (not "." or "..")."""
    return bool(name) and all(c.isalnum() or c in "._-" for c in name) and name not in (".", "..")


def register() -> None:
    """Register the root schema as ``base_config`` (conf/config.yaml lists it first)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)
