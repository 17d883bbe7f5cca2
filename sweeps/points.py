"""A point of a sweep: its settings (plain dicts), the PointSpec they build, and its identity.

A point's settings are the ``model``, ``data`` and ``train`` groups of the config with the
grid's values set. Its ``point_id`` is a content hash of those settings and its seed, so the
same grid always gives the same ids and a rerun finds what is already done.

Stable identities: the hash covers every field the store's schema version 1 knew
(:data:`ID_FIELDS_V1`) always, and a field added since only when it differs from its neutral
value (:data:`NEUTRAL`, the value that reproduces what the code did before the field existed).
So adding a setting leaves every existing id unchanged; a new field must be entered in
:data:`NEUTRAL` (a test fails until it is). The driver, the workers and the store's
``points.parquet`` all use this module; it imports no Hydra, Ray or torch.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import fields

from toymodels.config import DataConfig, ModelConfig, PointSpec, TrainConfig

GROUP_CLASSES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
POINT_GROUPS = tuple(GROUP_CLASSES)
"""The groups whose keys define a point (and its point_id) and may be swept."""

ID_FIELDS_V1 = {
    "model": ("kind", "n_features", "n_hidden", "l1_penalty"),
    "data": ("density", "importance_decay", "importance_values", "extra_importance", "extra_density",
             "density_values", "correlation", "n_sets", "set_size", "anticorrelated_marginal"),
    "train": ("steps", "batch_size", "lr", "weight_decay", "optimizer", "beta1", "beta2", "eps", "schedule",
              "warmup_steps", "eval_batch_size", "log_checkpoints", "linear_checkpoints"),
}
"""The settings of store schema version 1: always part of a point's identity."""

NEUTRAL: dict[str, object] = {"train.eval_seed": 0, "train.selection_rows": 131_072, "train.init_scale": 1.0,
                               "train.inputs": "dense", "data.density_exponent": 0.0, "data.density_min": 0.0,
                               "data.importance_exponent": 0.0, "data.normalize": False, "data.dataset_size": None}
"""Dotted key -> neutral value of each setting added after schema version 1. At its neutral
value a setting is left out of the hash, so ids of points that do not use it stay as they were."""


def cell_settings(base: dict, swept: list[str], values) -> dict:
    """Nested model/data/train dicts of the base config with the swept values set."""
    settings = {g: dict(base[g]) for g in POINT_GROUPS}
    for key, value in zip(swept, values):
        group, name = key.split(".", 1)
        settings[group][name] = value
    return settings


def build_spec(settings: dict, seed: int) -> PointSpec:
    """A validated PointSpec from plain settings (raises ValueError("key: message"))."""
    return PointSpec(model=ModelConfig(**settings["model"]), data=DataConfig(**settings["data"]),
                     train=TrainConfig(**settings["train"]), seed=int(seed))


def identity(group: str, values: dict) -> dict:
    """The part of one group's settings that identifies a point (see the module docstring)."""
    return {k: v for k, v in values.items()
            if k in ID_FIELDS_V1[group] or NEUTRAL.get(f"{group}.{k}", _ABSENT) != v}


def group_json(group: str, values: dict) -> str:
    """Canonical JSON of one group's identifying settings (sorted keys, no spaces)."""
    return canonical(identity(group, values))


def cell_id(group_jsons: dict[str, str]) -> str:
    """16-hex hash of a cell's settings, from :func:`group_json` of each group."""
    return digest(_settings_json(group_jsons, None))


def point_id(group_jsons: dict[str, str], seed: int) -> str:
    """16-hex hash of a point's settings and seed, from :func:`group_json` of each group."""
    return digest(_settings_json(group_jsons, seed))


def _settings_json(group_jsons: dict[str, str], seed: int | None) -> str:
    # Equal to canonical({"data": …, "model": …, "seed": seed, "train": …}): keys in sorted order.
    seed_part = "" if seed is None else f',"seed":{int(seed)}'
    return (f'{{"data":{group_jsons["data"]},"model":{group_jsons["model"]}{seed_part},'
            f'"train":{group_jsons["train"]}}}')


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dotted_columns() -> dict[str, str]:
    """Every point setting's dotted key -> its Arrow type name (int64, float64, string, bool, json)."""
    out = {}
    for group, cls in GROUP_CLASSES.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            t = hints[f.name]
            out[f"{group}.{f.name}"] = {int: "int64", float: "float64", str: "string", bool: "bool"}.get(t, "json")
    return out


_ABSENT = object()
