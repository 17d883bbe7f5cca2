"""`tms analyze SWEEP_DIR [--out DIR] [options]` (also `python -m analysis SWEEP_DIR`).

Bad input ends with one line on stderr and exit status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .analyze import analyze
from .config import AGGREGATES, AnalysisConfig, FigureConfig, GeometryConfig, PhaseConfig, TimelineConfig
from .errors import AnalysisError

PROG = "tms analyze"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise _UsageError(message)


def _axes(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two dotted keys X,Y, got {text!r}")
    return parts[0], parts[1]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tms analyze`."""
    p = _Parser(prog=PROG, description="Phase diagrams, energy levels, geometry labels and timelines "
                                       "from a sweep's Parquet store.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the sweep's folder <store>/<sweep.name> "
                   "(a local path or a pyarrow filesystem URI)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: SWEEP_DIR/analysis)")
    p.add_argument("--axes", type=_axes, default=PhaseConfig.axes, metavar="X,Y",
                   help="the phase diagram's two swept keys (default: data.density,data.extra_importance)")
    p.add_argument("--aggregate", choices=AGGREGATES, default=PhaseConfig.aggregate,
                   help="seeds of a cell: best (lowest eval loss) or mean_drop_worst")
    p.add_argument("--learned-norm", metavar="NORM", type=float, default=AnalysisConfig.learned_norm,
                   help="‖W_i‖ above which a feature counts as learned (default %(default)s)")
    p.add_argument("--superposition-interference", metavar="I", type=float,
                   default=PhaseConfig.superposition_interference,
                   help="interference from which a learned extra feature is in superposition "
                        "(default %(default)s)")
    p.add_argument("--boundary-margin", metavar="DECADES", type=float, default=PhaseConfig.boundary_margin,
                   help="decades from an analytic boundary within which cells are not scored "
                        "(default %(default)s)")
    p.add_argument("--edge-eps", metavar="EPS", type=float, default=GeometryConfig.edge_eps,
                   help="|Ŵ_i·Ŵ_j| above which two features share a tegum factor (default %(default)s)")
    p.add_argument("--level-tol", metavar="TOL", type=float, default=AnalysisConfig.level_tol,
                   help="distance of D_i to an energy level that counts as on it (default %(default)s)")
    p.add_argument("--min-drop", metavar="FRACTION", type=float, default=TimelineConfig.min_drop,
                   help="fraction by which the loss must fall between plateaus (default %(default)s)")
    p.add_argument("--max-timelines", metavar="N", type=int, default=FigureConfig.max_timelines,
                   help="timeline figures to draw (default %(default)s)")
    p.add_argument("--formats", metavar="LIST", default="png,svg", help="figure formats, comma-separated (png always)")
    p.add_argument("--max-rows-in-memory", metavar="ROWS", type=int, default=AnalysisConfig.max_rows_in_memory,
                   help="feature rows read at once (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    return p


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    """Build the (validated) configuration from parsed arguments."""
    return AnalysisConfig(
        learned_norm=args.learned_norm, level_tol=args.level_tol,
        max_rows_in_memory=args.max_rows_in_memory,
        phase=PhaseConfig(axes=tuple(args.axes), aggregate=args.aggregate,
                          superposition_interference=args.superposition_interference,
                          boundary_margin=args.boundary_margin),
        geometry=GeometryConfig(edge_eps=args.edge_eps),
        timeline=TimelineConfig(min_drop=args.min_drop),
        figures=FigureConfig(formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                             max_timelines=args.max_timelines),
    )


def main(argv: Optional[list[str]] = None) -> int:
    """Run `tms analyze` with ``argv`` (without the word "analyze"); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        config = config_from_args(args)
        log = (lambda msg: None) if args.quiet else (lambda msg: print(f"{PROG}: {msg}"))
        result = analyze(args.sweep_dir, args.out, config, log=log)
    except (AnalysisError, ValueError) as exc:
        if args.debug and not isinstance(exc, AnalysisError):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: say so in one line unless --debug
        if args.debug:
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1
    if not args.quiet:
        s = result.summary
        score = s["phase_agreement"]
        agree = f"; phase agreement {score:.1%} of {s['phase_agreement_cells']} cells" if score is not None else ""
        print(f"{PROG}: {s['analysed_points']} points, {s['cells']} cells{agree}; "
              f"{len(result.files)} files in {result.out_dir}")
        for name in result.files:
            print(f"  {name}")
    return 0
