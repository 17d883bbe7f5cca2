"""Offline analysis of a sweep's Parquet store: phase diagrams with their theory, energy levels,
tegum-factor geometry labels, loss-plateau / geometry-transition timelines and a report.

Reads only the store (docs/store.md) with pyarrow, pandas, numpy and matplotlib; never imports
torch, ray, hydra or wandb. Entry points: ``tms analyze`` / ``python -m analysis`` (see
:mod:`analysis.cli`) and :func:`analyze`.
"""

import importlib

_WHERE = {"AnalysisResult": "analyze", "analyze": "analyze", "AnalysisConfig": "config", "FigureConfig": "config",
          "GeometryConfig": "config", "PhaseConfig": "config", "TimelineConfig": "config",
          "AnalysisError": "errors"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Load on first use, so `tms analyze --help` and its bad input need not load matplotlib."""
    if name not in _WHERE:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
