"""Offline analysis of a sweep's Parquet store: phase diagrams with their theory, energy levels,
tegum-factor geometry labels, loss-plateau / geometry-transition timelines and a report.

Reads only the store (docs/store.md) with pyarrow, pandas, numpy and matplotlib; never imports
torch, ray, hydra or wandb. Entry points: ``tms analyze`` / ``python -m analysis`` (see
:mod:`analysis.cli`) and :func:`analyze`.
"""

from .analyze import AnalysisResult, analyze
from .config import AnalysisConfig, FigureConfig, GeometryConfig, PhaseConfig, TimelineConfig
from .errors import AnalysisError

__all__ = ["AnalysisConfig", "AnalysisError", "AnalysisResult", "FigureConfig", "GeometryConfig",
           "PhaseConfig", "TimelineConfig", "analyze"]
