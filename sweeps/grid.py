"""From command-line overrides to a composed config and its grid axes (Hydra's Compose API).

The grid is written the way Hydra users write sweeps — ``key=a,b,c``, ``range()``,
``choice()`` — on the command line or in an experiment's ``hydra.sweeper.params``, plus
three spacing helpers registered with Hydra's override grammar:

    linspace(start, stop, num)      num values evenly spaced from start to stop
    geomspace(start, stop, num)     num values evenly spaced on a log axis from start to stop
    logspace(start, stop, num)      10**linspace(start, stop, num)

Float grid values are rounded to 10 significant digits so point ids do not depend on the
last bit of a platform's libm. An axis is counted before any of its values is built or
checked (:func:`axis_length`), so an oversized grid is refused at once. Config group choices
(``experiment=…``) must be names from the config tree: path components are refused.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Union

from omegaconf import DictConfig, OmegaConf, open_dict

from sweeps.config import Config, is_safe_name, register
from sweeps.errors import UsageError, one_line

CONFIG_GROUPS = ("model", "data", "train", "sweep", "wandb", "ray", "experiment", "debug")


def conf_dir() -> Path:
    """The config tree: $TMS_CONF_DIR, else the one shipped inside this package."""
    return Path(os.environ.get("TMS_CONF_DIR") or Path(__file__).resolve().parent / "conf")


def group_choices(group: str) -> list[str]:
    """The choices of one config group (its YAML files' names)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


# ----------------------------------------------------------------------------- grid syntax

def _round(v: float) -> float:
    return float(f"{v:.10g}")


def _spaced(kind: str, start, stop, num) -> list[float]:
    import numpy as np

    if kind == "geomspace":
        return [_round(v) for v in np.geomspace(start, stop, num)]
    return [_round(v) for v in (np.linspace if kind == "linspace" else np.logspace)(start, stop, num)]


def _helper(kind: str, counting: bool):
    """A spacing helper for Hydra's grammar. While counting it returns a lazy range of the same
    length instead of the values, so an axis of any size costs nothing until it is accepted."""
    def fn(start: Union[int, float], stop: Union[int, float], num: int) -> Any:
        from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

        if not isinstance(num, int) or isinstance(num, bool) or num < 0:
            raise ValueError(f"{kind} needs an integer num >= 0, got {num!r}")
        if not all(math.isfinite(v) for v in (start, stop)):
            raise ValueError(f"{kind} needs finite start and stop")
        if kind == "geomspace" and (start <= 0 or stop <= 0):
            raise ValueError("geomspace needs start > 0 and stop > 0")
        if counting:
            return RangeSweep(start=0, stop=num, step=1)
        return ChoiceSweep(list=_spaced(kind, start, stop, num))
    fn.__name__ = kind
    # Hydra checks arguments against the annotations: give it real types, not strings
    fn.__annotations__ = {"start": Union[int, float], "stop": Union[int, float], "num": int, "return": Any}
    return fn


def _parser(counting: bool):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for kind in ("linspace", "geomspace", "logspace"):
        parser.functions.register(name=kind, func=_helper(kind, counting))
    return parser


def parse_override(parser, text: str):
    """Parse one ``key=value`` override; a bad one is a UsageError naming its key."""
    key = text.split("=", 1)[0].lstrip("+~") or text
    try:
        return parser.parse_override(text)
    except Exception as exc:  # Hydra raises several types, all with a readable message
        raise UsageError(f"{key}: cannot parse {text!r}: {one_line(' '.join(str(exc).split()))}") from None


def axis_length(override) -> int:
    """Number of values a sweep override gives, without building them."""
    from hydra.core.override_parser.types import RangeSweep

    sweep = override.value()
    if isinstance(sweep, RangeSweep):
        r = sweep.range()
        if isinstance(r, range):
            return len(r)
        return max(0, math.ceil((sweep.stop - sweep.start) / sweep.step)) if sweep.step else 0
    return len(sweep.list)


def axis_values(text: str) -> list:
    """The values of one accepted axis (Hydra's own iterator; floats rounded)."""
    override = parse_override(_parser(counting=False), text)
    if not override.is_sweep_override():
        return [override.value()]
    return [_round(v) if isinstance(v, float) else v for v in override.sweep_iterator()]


def _check_override(ov, text: str) -> None:
    """Refuse what could reach outside the config tree: Hydra's own settings, packages, paths."""
    key = ov.key_or_group
    if key == "hydra" or key.startswith(("hydra.", "hydra/")) or "@" in text.split("=", 1)[0]:
        raise UsageError(f"{key}: not a setting of tms (Hydra's own settings and packages cannot be overridden)")
    if key in CONFIG_GROUPS and not ov.is_sweep_override():
        choice = ov.value()
        if choice is not None and not (isinstance(choice, str) and is_safe_name(choice)):
            raise UsageError(f"{key}: {choice!r} is not a choice of the config tree; "
                             f"allowed: {', '.join(group_choices(key)) or 'none'}")


# ----------------------------------------------------------------------------- composing

def compose(overrides: list[str]) -> tuple[DictConfig, dict[str, tuple[str, int]], str | None]:
    """Compose the config tree with the plain overrides.

    Returns (config, axes, experiment name); ``axes`` maps each swept key to (override text,
    number of values): the experiment's ``hydra.sweeper.params`` first, then the command line's
    (which win). Values are built later, by :func:`axis_values`, once the grid's size is accepted.
    """
    from hydra import compose as hydra_compose, initialize_config_dir

    counter = _parser(counting=True)
    plain, cli_axes = [], {}
    for text in overrides:
        ov = parse_override(counter, text)
        _check_override(ov, text)
        key = ov.key_or_group
        if ov.is_sweep_override():
            if key in CONFIG_GROUPS or "/" in key:
                raise UsageError(f"{key}: sweeping over config groups is not supported; "
                                 "run one command per choice")
            cli_axes[key] = (text, axis_length(ov))
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
        raise UsageError(compose_error(exc)) from None

    experiment = OmegaConf.select(cfg, "hydra.runtime.choices.experiment")
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    plain_keys = {counter.parse_override(t).key_or_group for t in plain}
    axes: dict[str, tuple[str, int]] = {}
    for key, value in params.items():
        if key in plain_keys:  # a single value on the command line replaces the experiment's axis
            continue
        text = f"{key}={value}"
        ov = parse_override(counter, text)
        axes[key] = (text, axis_length(ov) if ov.is_sweep_override() else 1)
    axes.update(cli_axes)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, axes, experiment


def compose_error(exc: BaseException) -> str:
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
        msg = one_line(cause)
        m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
        if m:
            msg = f"expected {m.group(2).lower()}, got {m.group(1)!r}"
        return f"{key or 'config'}: {msg}"
    return one_line(" ".join(str(exc).split()))


def _allowed_keys(group: str) -> str:
    node = OmegaConf.structured(Config)
    sub = OmegaConf.select(node, group) if group else node
    return ", ".join(sub.keys()) if isinstance(sub, DictConfig) else ""
