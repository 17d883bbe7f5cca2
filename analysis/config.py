"""Thresholds and limits of the analysis, as plain dataclasses.

Every field is documented and validated in ``__post_init__``; a bad value raises
``ValueError`` naming the field (the CLI turns it into one line on stderr).
"""

from __future__ import annotations

from dataclasses import dataclass, field

AGGREGATES = ("best", "mean_drop_worst")
FORMATS = ("png", "svg")


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {msg}")


@dataclass(frozen=True)
class PhaseConfig:
    """How a grid cell's seeds are aggregated and its extra feature (the last one) classified."""

    axes: tuple[str, str] = ("data.density", "data.extra_importance")
    """The two swept dotted keys drawn on the x and y axes of the phase diagram."""
    aggregate: str = "best"
    """best: the seed with the lowest final eval loss (the paper's best-of-N);
    mean_drop_worst: the mean of the continuous values over the seeds after dropping the
    highest-loss one (the paper's n=2, m=1 phase diagram)."""
    superposition_interference: float = 0.25
    """A learned extra feature whose interference Σ_{j≠i}(Ŵ_i·W_j)² is at least this is in
    superposition; below it, the feature has a dedicated dimension."""
    boundary_margin: float = 0.1
    """Cells closer than this (in decades, Euclidean in (log10 s, log10 r)) to an analytic phase
    boundary are left out of the agreement score."""

    def __post_init__(self) -> None:
        _check(len(self.axes) == 2 and self.axes[0] != self.axes[1] and all(self.axes),
               "phase.axes", f"needs two different dotted keys, got {self.axes!r}")
        _check(self.aggregate in AGGREGATES, "phase.aggregate",
               f"got {self.aggregate!r}; allowed: {', '.join(AGGREGATES)}")
        _check(0 < self.superposition_interference, "phase.superposition_interference",
               f"must be > 0, got {self.superposition_interference}")
        _check(self.boundary_margin >= 0, "phase.boundary_margin",
               f"must be >= 0, got {self.boundary_margin}")


@dataclass(frozen=True)
class GeometryConfig:
    """How final weights are split into tegum factors and named."""

    edge_eps: float = 0.1
    """Two learned features interfere (share a factor) when |Ŵ_i·Ŵ_j| exceeds this."""
    rank_tol: float = 0.1
    """A factor's dimension d counts singular values of its columns above rank_tol × the largest."""
    uniform_tol: float = 0.05
    """A factor is uniform when every member's D_i is within this of d/k."""
    polysemantic_fraction: float = 0.25
    """A neuron represents feature i when its weight to i is at least this fraction of its
    largest weight (positive weights for relu_hidden, absolute for abs)."""
    dead_weight: float = 0.1
    """A neuron whose largest such weight is below this is dead (neither mono- nor polysemantic)."""

    def __post_init__(self) -> None:
        _check(0 < self.edge_eps < 1, "geometry.edge_eps", f"must be in (0, 1), got {self.edge_eps}")
        _check(0 < self.rank_tol < 1, "geometry.rank_tol", f"must be in (0, 1), got {self.rank_tol}")
        _check(self.uniform_tol > 0, "geometry.uniform_tol", f"must be > 0, got {self.uniform_tol}")
        _check(0 < self.polysemantic_fraction <= 1, "geometry.polysemantic_fraction",
               f"must be in (0, 1], got {self.polysemantic_fraction}")
        _check(self.dead_weight >= 0, "geometry.dead_weight", f"must be >= 0, got {self.dead_weight}")


@dataclass(frozen=True)
class TimelineConfig:
    """How loss plateaus, drops and energy-level transitions are detected and aligned."""

    plateau_slope: float = 0.15
    """A checkpoint interval is flat when |Δlog10 loss / Δlog10 step| is at most this."""
    min_plateau_points: int = 3
    """A plateau spans at least this many consecutive checkpoints."""
    min_drop: float = 0.1
    """A drop between two plateaus lowers the loss by at least this fraction (0.1 = 10 %)."""
    drop_slope: float = 0.15
    """…and falls at least this steeply on average over its span (|Δlog10 loss / Δlog10 step|),
    so that a smooth power-law stretch between two noise-broken flat ones is no drop."""
    min_dwell: int = 3
    """A feature has settled at an energy level after this many consecutive checkpoints there
    over which its D_i varies by at most level_tol."""
    match_tolerance: int = 1
    """A transition matches a drop when its checkpoint lies in the drop's span widened by this
    many checkpoints on each side."""

    def __post_init__(self) -> None:
        _check(self.plateau_slope > 0, "timeline.plateau_slope", f"must be > 0, got {self.plateau_slope}")
        _check(self.min_plateau_points >= 2, "timeline.min_plateau_points",
               f"must be >= 2, got {self.min_plateau_points}")
        _check(0 < self.min_drop < 1, "timeline.min_drop", f"must be in (0, 1), got {self.min_drop}")
        _check(self.drop_slope >= self.plateau_slope, "timeline.drop_slope",
               f"must be >= timeline.plateau_slope ({self.plateau_slope}), got {self.drop_slope}")
        _check(self.min_dwell >= 1, "timeline.min_dwell", f"must be >= 1, got {self.min_dwell}")
        _check(self.match_tolerance >= 0, "timeline.match_tolerance",
               f"must be >= 0, got {self.match_tolerance}")


@dataclass(frozen=True)
class FigureConfig:
    """Which figures are drawn and how large they get."""

    formats: tuple[str, ...] = FORMATS
    """File formats written for every figure (png is always written: the report embeds it)."""
    max_timelines: int = 8
    """Timeline figures drawn (the points with the most detected events, one per cell)."""
    max_columns: int = 8
    """Panels per row in grid figures (values of the first axis, evenly subsampled)."""
    max_rows: int = 6
    """Rows in grid figures (values of the second axis, evenly subsampled)."""
    max_features_shown: int = 100
    """Features drawn in WᵀW heatmaps and norm bars (the first, most important ones)."""
    max_facets: int = 6
    """Figures of one kind drawn per sweep (one per combination of the other swept keys);
    the tables always cover every facet."""
    dpi: int = 90
    """Resolution of the PNGs."""

    def __post_init__(self) -> None:
        _check(len(self.formats) >= 1 and all(f in FORMATS for f in self.formats), "figures.formats",
               f"got {self.formats!r}; allowed: {', '.join(FORMATS)}")
        for key in ("max_timelines", "max_columns", "max_rows", "max_features_shown", "max_facets"):
            _check(getattr(self, key) >= (0 if key == "max_timelines" else 1), f"figures.{key}",
                   f"got {getattr(self, key)}")
        _check(20 <= self.dpi <= 600, "figures.dpi", f"must be in [20, 600], got {self.dpi}")


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything `tms analyze` can be told; the defaults reproduce the paper's pictures."""

    learned_norm: float = 0.5
    """‖W_i‖ above which a feature counts as learned (one reproduction's cut-off; the paper gives
    none). Below it D_i is taken as 0."""
    level_tol: float = 0.05
    """D_i within this of an energy level (1, 3/4, 2/3, 1/2, 2/5, 3/8, 0) sits at that level
    (the nearest one when two are in reach)."""
    max_rows_in_memory: int = 1_000_000
    """Feature rows read at once; larger trial files are read in groups of points."""
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    """Phase-diagram settings."""
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    """Geometry-labelling settings."""
    timeline: TimelineConfig = field(default_factory=TimelineConfig)
    """Timeline-detection settings."""
    figures: FigureConfig = field(default_factory=FigureConfig)
    """Figure settings."""

    def __post_init__(self) -> None:
        _check(0 < self.learned_norm < 2, "learned_norm", f"must be in (0, 2), got {self.learned_norm}")
        _check(0 < self.level_tol < 0.5, "level_tol", f"must be in (0, 0.5), got {self.level_tol}")
        _check(self.max_rows_in_memory >= 1000, "max_rows_in_memory",
               f"must be >= 1000, got {self.max_rows_in_memory}")
