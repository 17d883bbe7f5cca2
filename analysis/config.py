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
    """best: the seed with the lowest selection loss (the paper's best-of-N; the store's
    ``selection_loss``, measured on evaluation rows all seeds of a cell share, or each seed's
    final eval loss in a schema-1 store that has none); mean_drop_worst: the mean of the
    continuous values over the seeds after dropping the highest-loss one (the paper's n=2, m=1
    phase diagram)."""
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
    """How weights are split into tegum factors and the factors named."""

    edge_eps: float = 0.25
    """Two learned features are linked into one factor when |Ŵ_i·Ŵ_j| exceeds this: above the
    cross-factor noise of trained models (|cos| up to ~0.1), below the weakest link inside a
    named polytope (the tetrahedron's 1/3)."""
    leak_max: float = 0.5
    """Factors are merged while a learned feature outside one puts more than this (norm of its
    unit direction projected into the factor's subspace) into it."""
    rank_tol: float = 0.25
    """A factor's dimension d counts singular values of its unit columns above rank_tol × the largest."""
    shape_tol: float = 0.1
    """A factor is named after a polytope when its members' sorted cosines with each other are
    within this of the polytope's (root mean square; noise that moves cross-factor |cos| up to
    ~0.15 stays under 0.08, the cube is 0.27 from the square antiprism, and a random
    arrangement of 3 or more vectors comes this close less than 0.3 % of the time)."""
    norm_tol: float = 0.2
    """…and every member's ‖W_i‖ is within this fraction of the factor's mean norm."""
    uniform_tol: float = 0.05
    """A factor is uniform when every member's D_i is within this of d/k."""
    polysemantic_fraction: float = 0.25
    """A neuron represents feature i when its weight to i is at least this fraction of its
    largest weight (positive weights for relu_hidden, absolute for abs)."""
    dead_weight: float = 0.1
    """A neuron whose largest such weight is below this is dead (neither mono- nor polysemantic)."""

    def __post_init__(self) -> None:
        _check(0 < self.edge_eps < 1, "geometry.edge_eps", f"must be in (0, 1), got {self.edge_eps}")
        _check(0 < self.leak_max < 1, "geometry.leak_max", f"must be in (0, 1), got {self.leak_max}")
        _check(0 < self.rank_tol < 1, "geometry.rank_tol", f"must be in (0, 1), got {self.rank_tol}")
        _check(0 < self.shape_tol < 0.5, "geometry.shape_tol", f"must be in (0, 0.5), got {self.shape_tol}")
        _check(self.norm_tol > 0, "geometry.norm_tol", f"must be > 0, got {self.norm_tol}")
        _check(self.uniform_tol > 0, "geometry.uniform_tol", f"must be > 0, got {self.uniform_tol}")
        _check(0 < self.polysemantic_fraction <= 1, "geometry.polysemantic_fraction",
               f"must be in (0, 1], got {self.polysemantic_fraction}")
        _check(self.dead_weight >= 0, "geometry.dead_weight", f"must be >= 0, got {self.dead_weight}")


@dataclass(frozen=True)
class TimelineConfig:
    """How loss plateaus, drops and energy-level transitions are detected and aligned."""

    plateau_slope: float = 0.25
    """A checkpoint interval is flat when |Δlog10 loss / Δlog10 step| is at most this (the
    shoulders between the drops of the dynamics experiments fall at 0.1–0.3, the drops at
    0.6–4)."""
    min_plateau_points: int = 3
    """A plateau spans at least this many consecutive checkpoints."""
    min_drop: float = 0.1
    """A drop between two plateaus lowers the loss by at least this fraction (0.1 = 10 %)."""
    drop_slope: float = 0.25
    """…and falls at least this steeply on average over its span (|Δlog10 loss / Δlog10 step|),
    so that a smooth power-law stretch between two noise-broken flat ones is no drop."""
    min_dwell: int = 3
    """A feature has settled at an energy level after this many consecutive checkpoints within
    the level's tolerance, over which its D_i varies by at most that tolerance; a geometry label
    is stable after this many consecutive checkpoints."""
    still: float = 0.015
    """…and over which D_i varies by at most this (or the level's tolerance if smaller): trained
    D_i on a level vary by ~0.003 between checkpoints (90 % of stays within 0.013), while a D_i
    drifting through a level moves more."""
    min_jump: float = 0.1
    """A drop across which some feature's D_i moves by at least this (the gap between the 1/2 and
    2/5 levels) changes the geometry even when no level jump or label change meets it."""
    match_tolerance: int = 1
    """A transition or geometry event matches a drop when it meets the drop's core widened by
    this many checkpoints on each side."""

    def __post_init__(self) -> None:
        _check(self.plateau_slope > 0, "timeline.plateau_slope", f"must be > 0, got {self.plateau_slope}")
        _check(self.min_plateau_points >= 2, "timeline.min_plateau_points",
               f"must be >= 2, got {self.min_plateau_points}")
        _check(0 < self.min_drop < 1, "timeline.min_drop", f"must be in (0, 1), got {self.min_drop}")
        _check(self.drop_slope >= self.plateau_slope, "timeline.drop_slope",
               f"must be >= timeline.plateau_slope ({self.plateau_slope}), got {self.drop_slope}")
        _check(self.min_dwell >= 1, "timeline.min_dwell", f"must be >= 1, got {self.min_dwell}")
        _check(self.still > 0, "timeline.still", f"must be > 0, got {self.still}")
        _check(self.min_jump > 0, "timeline.min_jump", f"must be > 0, got {self.min_jump}")
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
    """Largest distance of D_i to an energy level (1, 3/4, 2/3, 1/2, 2/5, 3/8) that counts as on
    it; each level's own tolerance is narrower where level_gap_fraction asks for it."""
    level_gap_fraction: float = 0.4
    """A level's tolerance is at most this fraction of the gap to its nearest neighbour (below
    1/2, so no D_i is on two levels): 1/2 gets 0.04, 3/4 and 2/3 0.033, 2/5 and 3/8 0.01."""
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
        _check(0 < self.level_gap_fraction < 0.5, "level_gap_fraction",
               f"must be in (0, 0.5), got {self.level_gap_fraction}")
        _check(self.max_rows_in_memory >= 1000, "max_rows_in_memory",
               f"must be >= 1000, got {self.max_rows_in_memory}")
