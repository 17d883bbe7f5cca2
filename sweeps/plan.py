"""From command-line overrides to a plan: compose once, expand the grid, validate, pack.

The grid is written the way Hydra users write sweeps — ``key=a,b,c``, ``range()``,
``choice()`` — on the command line or in an experiment's ``hydra.sweeper.params``, plus
three spacing helpers registered with Hydra's override grammar:

    linspace(start, stop, num)      num values evenly spaced from start to stop
    geomspace(start, stop, num)     num values evenly spaced on a log axis from start to stop
    logspace(start, stop, num)      10**linspace(start, stop, num)

Float grid values are rounded to 10 significant digits so point ids do not depend on the
last bit of a platform's libm. Only the driver runs this module; workers get plain dicts.
"""

import hashlib
import itertools
import json
import math
import os
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeps.run import build_spec, cell_settings
from sweeps.schema import POINT_GROUPS, Config, UsageError, register
from toymodels.config import DataConfig, ModelConfig, PointSpec, TrainConfig

GROUP_CLASSES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
CONFIG_GROUPS = ("model", "data", "train", "sweep", "wandb", "ray", "experiment", "debug")


def conf_dir() -> Path:
    """The conf/ directory: $TMS_CONF_DIR, else the one next to this package."""
    return Path(os.environ.get("TMS_CONF_DIR") or Path(__file__).resolve().parents[1] / "conf")


# ----------------------------------------------------------------------------- grid syntax

def _round(v: float) -> float:
    return float(f"{v:.10g}")


def linspace(start: Union[int, float], stop: Union[int, float], num: int) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep
    return ChoiceSweep(list=[_round(v) for v in np.linspace(start, stop, num)])


def geomspace(start: Union[int, float], stop: Union[int, float], num: int) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep
    if start <= 0 or stop <= 0:
        raise ValueError("geomspace needs start > 0 and stop > 0")
    return ChoiceSweep(list=[_round(v) for v in np.geomspace(start, stop, num)])


def logspace(start: Union[int, float], stop: Union[int, float], num: int) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep
    return ChoiceSweep(list=[_round(v) for v in np.logspace(start, stop, num)])


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    for fn in (linspace, geomspace, logspace):
        parser.functions.register(name=fn.__name__, func=fn)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def parse_override(parser, text: str):
    """Parse one ``key=value`` override; a bad one is a UsageError naming its key."""
    key = text.split("=", 1)[0].lstrip("+~") or text
    try:
        return parser.parse_override(text)
    except Exception as exc:  # Hydra raises several types, all with a readable message
        raise UsageError(f"{key}: cannot parse {text!r}: {_one_line(exc)}") from None


def sweep_values(override) -> list:
    """The list of values a sweep override expands to (Hydra's own iterator)."""
    values = list(override.sweep_iterator())
    return [_round(v) if isinstance(v, float) else v for v in values]


# ----------------------------------------------------------------------------- composing

def compose(overrides: list[str]) -> tuple[DictConfig, dict[str, tuple[str, list]], str | None]:
    """Compose conf/ with the plain overrides; return (config, grid axes, experiment name).

    Sweep overrides (``a=1,2``, ``range()``…) are taken out before composing and become grid
    axes, after the experiment's ``hydra.sweeper.params`` (the command line wins).
    """
    from hydra import compose as hydra_compose, initialize_config_dir

    parser = _parser()
    plain, cli_axes = [], {}
    for text in overrides:
        ov = parse_override(parser, text)
        key = ov.key_or_group
        if ov.is_sweep_override():
            if key in CONFIG_GROUPS or "/" in key:
                raise UsageError(f"{key}: sweeping over config groups is not supported; "
                                 "run one command per choice")
            cli_axes[key] = (text, sweep_values(ov))
        else:
            plain.append(text)

    register()
    directory = conf_dir()
    if not (directory / "config.yaml").is_file():
        raise UsageError(f"TMS_CONF_DIR: no config.yaml in {directory}")
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(directory), job_name="tms"):
            cfg = hydra_compose(config_name="config", overrides=plain, return_hydra_config=True)
    except Exception as exc:
        raise UsageError(_compose_error(exc)) from None

    experiment = OmegaConf.select(cfg, "hydra.runtime.choices.experiment")
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    plain_keys = {parser.parse_override(t).key_or_group for t in plain}
    axes: dict[str, tuple[str, list]] = {}
    for key, value in params.items():
        if key in plain_keys:  # a single value on the command line replaces the experiment's axis
            continue
        text = f"{key}={value}"
        ov = parse_override(parser, text)
        axes[key] = (text, sweep_values(ov) if ov.is_sweep_override() else [ov.value()])
    axes.update(cli_axes)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, axes, experiment


def _compose_error(exc: BaseException) -> str:
    """One line naming the key from Hydra's / OmegaConf's multi-line composition errors."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, MissingConfigException) and getattr(exc, "missing_cfg_file", None):
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        options = sorted(exc.options or [])
        return f"{group or 'config'}: unknown choice {choice!r}; allowed: {', '.join(options) or 'none'}"
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or ""
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            allowed = _allowed_keys(parent)
            return f"{key}: unknown key" + (f"; allowed in {parent or 'the config'}: {allowed}" if allowed else "")
        msg = str(cause).splitlines()[0]
        m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
        if m:
            msg = f"expected {m.group(2).lower()}, got {m.group(1)!r}"
        return f"{key or 'config'}: {msg}"
    return _one_line(exc)


def _allowed_keys(group: str) -> str:
    node = OmegaConf.structured(Config)
    sub = OmegaConf.select(node, group) if group else node
    return ", ".join(sub.keys()) if isinstance(sub, DictConfig) else ""


# ----------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Point:
    """One model of the grid: a cell (its swept values) and a seed."""

    point_id: str
    """16-hex content hash of the point's full model/data/train settings and its seed."""
    cell_id: str
    """16-hex hash of the same settings without the seed (shared by a cell's seeds)."""
    cell: int
    """Index of the grid cell in Plan.cells."""
    seed_index: int
    """0 … sweep.seeds−1 within the cell."""
    seed: int
    """The instance's seed: sweep.base_seed + seed_index."""


@dataclass
class Trial:
    """A pack of points sharing one ``toymodels.pack_key``: one Ray Tune trial."""

    trial_key: str
    """16-hex hash of the pack's point ids: names its files in the store."""
    points: list[Point]
    """The points, in plan order."""


@dataclass
class Plan:
    """A validated sweep: its config as plain data, the grid, every point, and how to pack them."""

    name: str
    """The sweep's name (directory under the store, W&B group)."""
    config: dict
    """The resolved config as plain data (no Hydra objects)."""
    swept: list[str]
    """Dotted keys that vary over the grid, in grid order."""
    axes: dict[str, list]
    """Each swept key's values."""
    cells: list[tuple]
    """The grid cells: one tuple of swept values (aligned with `swept`) per cell."""
    points: list[Point]
    """Every point, cell-major then seed."""
    pack_keys: list
    """toymodels.pack_key of each cell."""

    @property
    def grid_hash(self) -> str:
        return _hash("\n".join(sorted(p.point_id for p in self.points)))

    def settings(self, point: Point) -> dict:
        """The point's nested model/data/train settings (plain dicts)."""
        return cell_settings(self.config, self.swept, self.cells[point.cell])

    def spec(self, point: Point) -> PointSpec:
        return build_spec(self.settings(point), point.seed)

    def trials(self, points: list[Point] | None = None) -> list[Trial]:
        """Pack points (default: all) into trials of at most sweep.points_per_trial, by pack_key."""
        per_trial = self.config["sweep"]["points_per_trial"]
        groups: dict[Any, list[Point]] = {}
        for p in self.points if points is None else points:
            groups.setdefault(self.pack_keys[p.cell], []).append(p)
        trials = []
        for group in groups.values():
            n = math.ceil(len(group) / per_trial)
            for chunk in np.array_split(np.arange(len(group)), n):
                pts = [group[i] for i in chunk]
                trials.append(Trial(_hash("\n".join(sorted(p.point_id for p in pts))), pts))
        return trials

    def trial_payload(self, trial: Trial) -> dict:
        """What a worker needs for one trial, as plain data (sent through Ray Tune's config)."""
        base = {g: self.config[g] for g in POINT_GROUPS}
        return {
            "trial_key": trial.trial_key,
            "base": base,
            "swept": list(self.swept),
            "values": [list(self.cells[p.cell]) for p in trial.points],
            "point_ids": [p.point_id for p in trial.points],
            "seeds": [p.seed for p in trial.points],
        }


def make_plan(overrides: list[str]) -> Plan:
    """Compose, expand and validate the whole grid; any bad input raises UsageError."""
    cfg, axes_text, experiment = compose(overrides)
    try:
        OmegaConf.to_object(cfg)  # builds the dataclasses: runs every __post_init__ check
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    except Exception as exc:
        raise UsageError(_compose_error(exc)) from None
    config = OmegaConf.to_container(cfg, resolve=True)
    _check_keys(config)
    sweep = config["sweep"]

    axes = {key: _typed_axis(cfg, key, text, values, sweep["max_values_per_key"])
            for key, (text, values) in axes_text.items()}
    swept = list(axes)
    n_cells = math.prod(len(v) for v in axes.values())
    n_points = n_cells * sweep["seeds"]
    if n_points > sweep["max_points"]:
        raise UsageError(f"sweep.max_points: the grid has {n_points} points, above sweep.max_points="
                         f"{sweep['max_points']}; pass sweep.max_points={n_points} to confirm")

    import toymodels
    cells, pack_keys, points = [], [], []
    for values in itertools.product(*axes.values()):
        settings = cell_settings(config, swept, values)
        try:
            spec = build_spec(settings, sweep["base_seed"])
        except ValueError as exc:
            where = ", ".join(f"{k}={v}" for k, v in zip(swept, values))
            raise UsageError(f"{str(exc).splitlines()[0]}" + (f" (at {where})" if where else "")) from None
        cell = len(cells)
        cells.append(tuple(values))
        pack_keys.append(toymodels.pack_key(spec))
        cell_id = _hash(_canonical(settings))
        for k in range(sweep["seeds"]):
            seed = sweep["base_seed"] + k
            points.append(Point(_hash(_canonical({**settings, "seed": seed})), cell_id, cell, k, seed))

    name = (sweep["name"] or experiment or "default") + sweep["name_suffix"]
    config["sweep"]["name"] = name
    config["grid"] = {k: list(v) for k, v in axes.items()}
    config["experiment"] = experiment
    return Plan(name=name, config=config, swept=swept, axes=axes, cells=cells, points=points,
                pack_keys=pack_keys)


def _check_keys(config: dict) -> None:
    """Keys added with +key=… are not in the schema: refuse them like any unknown key."""
    schema = OmegaConf.to_container(OmegaConf.structured(Config))
    for key, value in config.items():
        if key not in schema:
            raise UsageError(f"{key}: unknown key; allowed in the config: {', '.join(schema)}")
        if isinstance(schema[key], dict):
            for sub in value:
                if sub not in schema[key]:
                    raise UsageError(f"{key}.{sub}: unknown key; allowed in {key}: {', '.join(schema[key])}")


def _typed_axis(cfg: DictConfig, key: str, text: str, values: list, max_values: int | None) -> list:
    group = key.split(".", 1)[0]
    if group not in POINT_GROUPS or "." not in key:
        raise UsageError(f"{key}: cannot be swept; only model.*, data.* and train.* keys form the grid "
                         "(use sweep.seeds for seeds)")
    if not values:
        raise UsageError(f"{key}: the grid is empty ({text!r} gives no values)")
    probe = cfg.copy()
    typed = []
    for v in values:
        try:
            OmegaConf.update(probe, key, v, merge=False)
        except Exception as exc:
            msg = _compose_error(exc)
            raise UsageError(msg if msg.startswith(key) else f"{key}: {msg}") from None
        got = OmegaConf.select(probe, key)
        typed.append(OmegaConf.to_container(got) if OmegaConf.is_config(got) else got)
    seen = set()
    for v in typed:
        marker = _canonical(v)
        if marker in seen:
            raise UsageError(f"{key}: value {v!r} appears twice in the grid ({text!r})")
        seen.add(marker)
    if max_values is not None and len(typed) > max_values:
        idx = sorted(set(np.linspace(0, len(typed) - 1, max_values).round().astype(int).tolist()))
        typed = [typed[i] for i in idx]
    return typed


def dotted_columns() -> dict[str, str]:
    """Every point setting's dotted key -> its Arrow type name (int64, float64, string, bool)."""
    out = {}
    for group, cls in GROUP_CLASSES.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            t = hints[f.name]
            out[f"{group}.{f.name}"] = {int: "int64", float: "float64", str: "string", bool: "bool"}.get(t, "json")
    return out


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
