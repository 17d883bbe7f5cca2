"""`tms analyze SWEEP_DIR [--out DIR] [options]` (also `python -m analysis SWEEP_DIR`).

Arguments are parsed once; the sweep, ``--axes`` (keys the sweep swept) and ``--out`` (a
folder that can be written) are checked before the store is read at length. Bad input ends
with one line on stderr and exit status 2; nothing is written then. W&B logging belongs to
`tms analyze` (tms.cli), not to this package.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import tempfile
from typing import TYPE_CHECKING, Optional

from .config import AGGREGATES, AnalysisConfig, FigureConfig, GeometryConfig, PhaseConfig, TimelineConfig
from .errors import AnalysisError

if TYPE_CHECKING:
    from .analyze import AnalysisResult

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
    p.add_argument("--axes", type=_axes, default=None, metavar="X,Y",
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
    p.add_argument("--shape-tol", metavar="TOL", type=float, default=GeometryConfig.shape_tol,
                   help="RMS distance of a factor's vertices from the ideal polytope's within which it is "
                        "named after it (default %(default)s)")
    p.add_argument("--level-tol", metavar="TOL", type=float, default=AnalysisConfig.level_tol,
                   help="distance of D_i to an energy level that counts as on it (default %(default)s)")
    p.add_argument("--level-gap-fraction", metavar="FRACTION", type=float,
                   default=AnalysisConfig.level_gap_fraction,
                   help="a level's band is at most this fraction of the gap to its neighbours "
                        "(default %(default)s)")
    p.add_argument("--min-drop", metavar="FRACTION", type=float, default=TimelineConfig.min_drop,
                   help="fraction by which the loss must fall between plateaus (default %(default)s)")
    p.add_argument("--min-jump", metavar="DELTA", type=float, default=TimelineConfig.min_jump,
                   help="move of a settled feature's D_i that counts as an event at a loss drop "
                        "(default %(default)s)")
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
        learned_norm=args.learned_norm, level_tol=args.level_tol, level_gap_fraction=args.level_gap_fraction,
        max_rows_in_memory=args.max_rows_in_memory,
        phase=PhaseConfig(axes=tuple(args.axes), aggregate=args.aggregate,
                          superposition_interference=args.superposition_interference,
                          boundary_margin=args.boundary_margin),
        geometry=GeometryConfig(edge_eps=args.edge_eps, shape_tol=args.shape_tol),
        timeline=TimelineConfig(min_drop=args.min_drop, min_jump=args.min_jump),
        figures=FigureConfig(formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                             max_timelines=args.max_timelines),
    )


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m analysis` with ``argv`` (without the word "analyze"); return the exit status."""
    return run(build_parser(), argv)[0]


def run(parser: argparse.ArgumentParser, argv: Optional[list[str]]
        ) -> tuple[int, Optional[argparse.Namespace], Optional["AnalysisResult"]]:
    """Parse ``argv`` once with ``parser`` (build_parser's, maybe extended), check the sweep,
    ``--axes`` and ``--out`` before anything is read at length, run the analysis and print
    its summary. Returns (exit status, the parsed options, the result when it succeeded)."""
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2, None, None
    except SystemExit as exc:  # --help
        return int(exc.code or 0), None, None
    try:
        _check_args(args)
        config = config_from_args(args)
        from .analyze import analyze  # matplotlib and pandas: only once the input is known good

        log = (lambda msg: None) if args.quiet else (lambda msg: print(f"{PROG}: {msg}"))
        result = analyze(args.sweep_dir, args.out, config, log=log)
    except (AnalysisError, ValueError) as exc:
        if args.debug and not isinstance(exc, AnalysisError):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2, args, None
    except Exception as exc:  # a bug, not bad input: say so in one line unless --debug
        if args.debug:
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1, args, None
    if not args.quiet:
        s = result.summary
        score = s["phase_agreement"]
        agree = f"; phase agreement {score:.1%} of {s['phase_agreement_cells']} cells" if score is not None else ""
        print(f"{PROG}: {s['analysed_points']} points, {s['cells']} cells{agree}; "
              f"{len(result.files)} files in {result.out_dir}")
        for name in result.files:
            print(f"  {name}")
    return 0, args, result


def _check_args(args: argparse.Namespace) -> None:
    """What can be refused at once: a missing sweep, axes it did not sweep, an unusable --out."""
    from .store import _reason

    fs, root = _open_sweep(args.sweep_dir)
    try:
        with fs.open_input_stream(posixpath.join(root, "sweep.json")) as f:
            meta = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        meta = None  # the analysis itself names what is missing (a store may lack sweep.json)
    except (OSError, ValueError) as exc:
        raise AnalysisError(f"{args.sweep_dir}/sweep.json: not readable ({_reason(exc)})") from None
    if args.axes is None:
        args.axes = PhaseConfig.axes
    elif isinstance(meta, dict) and "swept" in meta:
        swept = [str(k) for k in meta["swept"] or []]
        missing = [k for k in args.axes if k not in swept]
        if missing:
            raise AnalysisError(f"--axes: {', '.join(missing)} {'was' if len(missing) == 1 else 'were'} not swept "
                                f"in this sweep (swept: {', '.join(swept) or 'nothing'})")
    if args.out is None and "://" in args.sweep_dir:
        raise AnalysisError("--out: a remote store needs --out DIR (a local folder)")
    out = os.path.abspath(args.out or os.path.join(args.sweep_dir, "analysis"))
    probe = out
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise AnalysisError(f"--out: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tms-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise AnalysisError(f"--out: cannot write in {probe} ({exc.strerror or _reason(exc)})") from None


def _open_sweep(sweep_dir: str):
    import pyarrow.fs as pafs

    from .store import _reason

    if "://" not in sweep_dir:
        return pafs.LocalFileSystem(), os.path.abspath(sweep_dir)
    try:
        return pafs.FileSystem.from_uri(sweep_dir)
    except (OSError, ValueError) as exc:
        raise AnalysisError(f"{sweep_dir}: cannot open the store ({_reason(exc)})") from None
