"""W&B around the trainer, from the outside: one run per trial, grouped by sweep.

Each trial's run logs, at every checkpoint, the distribution over its points of the eval loss
and of every feature's dimensionality (histograms) plus a few means; at the end a `points`
table (one row per point: seed, varied values, outcome) and a `curves` table (one row per
point and checkpoint: loss, D*, and the per-feature dimensionality as an array). The driver
adds one `summary` run holding the table of all points; `tms analyze` adds an `analysis` run.
wandb is imported only when a run is made; no API key is ever stored, logged or printed.
"""

import json
import math
import netrc
import os
import sys
from urllib.parse import urlparse

import numpy as np

from sweeps.errors import UsageError, one_line

MAX_TABLE_ROWS = 10_000  # wandb.Table.MAX_ROWS: larger tables are truncated by W&B


def logged_in() -> bool:
    """Whether W&B credentials are available (environment or netrc); no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """auto -> WANDB_MODE when set, else online when logged in, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if logged_in() else "offline"


def check(wandb_cfg: dict, sweep_path: str | None) -> dict:
    """Resolve the mode and run directory on the driver; bad combinations are UsageErrors."""
    mode = resolve_mode(wandb_cfg["mode"])
    if mode == "online" and not logged_in():
        raise UsageError("wandb.mode: online needs a W&B login (`wandb login` or WANDB_API_KEY); "
                         "use wandb.mode=offline or wandb.mode=disabled")
    run_dir = wandb_cfg.get("dir") or sweep_path
    if mode != "disabled" and run_dir is None:
        raise UsageError("wandb.dir: W&B run files need a local or shared directory when the store is a URI")
    return {"mode": mode, "project": wandb_cfg["project"], "entity": wandb_cfg.get("entity"),
            "dir": run_dir and os.path.abspath(run_dir)}


def _init(wb: dict, group: str, name: str, job_type: str, config: dict):
    import wandb

    os.makedirs(wb["dir"], exist_ok=True)
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                              save_code=False, disable_code=True)
    return wandb.init(project=wb["project"], entity=wb["entity"], group=group, name=name,
                      job_type=job_type, config=config, dir=wb["dir"], mode=wb["mode"],
                      reinit="create_new", settings=settings)


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).ravel()
    return a[np.isfinite(a)]


def _mean(a) -> float:
    f = _finite(a)
    return float(f.mean()) if f.size else math.nan


class TrialRun:
    """The W&B run of one trial (a no-op when W&B is disabled)."""

    def __init__(self, wb: dict | None, sweep: str, trial_key: str, config: dict):
        self.run = None
        if wb and wb["mode"] != "disabled":
            self.run = _init(wb, sweep, trial_key, "train", config)

    def log(self, ck) -> None:
        if self.run is None:
            return
        import wandb

        row = {"eval_loss/mean": _mean(ck.loss), "eval_loss/min": float(np.nanmin(ck.loss)),
               "train_loss/mean": _mean(ck.train_loss), "d_star/mean": _mean(ck.d_star),
               "dimensionality/mean": _mean(ck.dimensionality), "lr/mean": _mean(ck.lr),
               "diverged": int(np.sum(ck.diverged))}
        for key, values in (("eval_loss/hist", ck.loss), ("dimensionality/hist", ck.dimensionality),
                            ("d_star/hist", ck.d_star)):
            finite = _finite(values)
            if finite.size:
                row[key] = wandb.Histogram(finite)
        self.run.log(row, step=int(ck.step))

    def finish(self, writer, done, varied: dict[str, list], seeds: list[int]) -> None:
        """Log the points and curves tables from the rows just committed to the store."""
        if self.run is None:
            return
        import wandb

        ids = done.column("point_id").to_pylist()
        cols = ["point_id", "seed", *varied, "status", "selection_loss", "final_loss", "final_d_star", "diverged_step"]
        status, loss = done.column("status").to_pylist(), done.column("final_loss").to_pylist()
        selection = done.column("selection_loss").to_pylist()
        d_star, div = done.column("final_d_star").to_pylist(), done.column("diverged_step").to_pylist()
        points = wandb.Table(columns=cols, data=[
            [pid, seeds[i], *(varied[k][i] for k in varied), status[i], selection[i], loss[i], d_star[i], div[i]]
            for i, pid in enumerate(ids)])

        steps = writer.steps
        loss_ck = np.stack(writer.metrics["loss"], axis=1)              # [points, checkpoints]
        dstar_ck = np.stack(writer.metrics["d_star"], axis=1)
        dim_ck = np.stack(writer.features["dimensionality"], axis=1)    # [points, checkpoints, n]
        keep = max(1, MAX_TABLE_ROWS // max(1, len(steps)))
        curves = wandb.Table(columns=["point_id", "step", "loss", "d_star", "dimensionality"], data=[
            [ids[i], steps[c], float(loss_ck[i, c]), float(dstar_ck[i, c]), dim_ck[i, c].tolist()]
            for i in range(min(keep, len(ids))) for c in range(len(steps))])
        self.run.log({"points": points, "curves": curves})
        self.run.summary.update({"points": len(ids), "diverged": status.count("diverged"),
                                 "final_loss/mean": _mean(loss), "final_loss/min": float(np.nanmin(loss)),
                                 "selection_loss/min": float(np.nanmin(selection))})
        self.run.finish()
        self.run = None

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None


def arrow_to_table(table):
    """A wandb.Table from the first 10,000 rows of an Arrow table (nulls stay null)."""
    import wandb

    table = table.slice(0, MAX_TABLE_ROWS)
    plain = (bool, int, float, str, type(None))
    columns = [[v if isinstance(v, plain) else json.dumps(v, default=str) for v in col.to_pylist()]
               for col in table.columns]
    return wandb.Table(columns=table.column_names, data=[list(row) for row in zip(*columns)])


def log_sweep_summary(wb: dict, sweep: str, points_table, config: dict) -> None:
    """One `summary` run in the sweep's group with the table of all points (first 10,000)."""
    if wb["mode"] == "disabled":
        return
    run = _init(wb, sweep, f"{sweep}-summary", "summary", config)
    run.log({"points": arrow_to_table(points_table)})
    counts = points_table.column("status").value_counts().to_pylist()
    run.summary.update({f"points/{c['values']}": c["counts"] for c in counts})
    run.finish()


def log_analysis(wb: dict, sweep: str, out_dir: str, config: dict) -> int:
    """Log the figures (PNG) and tables (Parquet) `tms analyze` wrote; return how many files.

    Only the files the analysis lists in its ``summary.json`` are logged (never other files
    in the directory); tables are capped at :data:`MAX_TABLE_ROWS` rows.
    """
    if wb["mode"] == "disabled":
        return 0
    import pyarrow.parquet as pq
    import wandb

    try:
        with open(os.path.join(out_dir, "summary.json")) as f:
            files = sorted(json.load(f).get("files", []))
    except (OSError, ValueError):
        files = []
    row = {}
    for name in files:
        path = os.path.join(out_dir, name)
        stem = os.path.splitext(name)[0]
        if name.endswith(".png"):
            row[f"figures/{stem}"] = wandb.Image(path)
        elif name.endswith(".parquet"):
            pf = pq.ParquetFile(path)
            table = pf.read() if pf.metadata.num_rows <= MAX_TABLE_ROWS else \
                next(pf.iter_batches(batch_size=MAX_TABLE_ROWS))
            row[f"tables/{stem}"] = arrow_to_table(table)
    run = _init(wb, sweep, f"{sweep}-analysis", "analysis", config)
    if row:
        run.log(row)
    run.finish()
    return len(row)


def log_analysis_run(sweep_dir: str, out_dir: str, mode: str = "auto") -> None:
    """Log what `tms analyze` wrote to W&B; ``mode`` auto follows the sweep's own config.yaml.

    Never fails the analysis: a W&B problem (no login, no network, no wandb) is one warning line.
    """
    import yaml

    from sweeps.store import SweepStore

    try:
        store = SweepStore(sweep_dir)
        config = yaml.safe_load(store.read_bytes("config.yaml") or b"") or {}
        wandb_cfg = {"mode": "disabled", "project": "tms-sweeps", "entity": None, "dir": None,
                     **(config.get("wandb") or {})}
        if mode != "auto":
            wandb_cfg["mode"] = mode
        if resolve_mode(wandb_cfg["mode"]) == "disabled":
            return
        wb = check(wandb_cfg, store.path if store.local else os.path.abspath(out_dir))
        name = (config.get("sweep") or {}).get("name") or os.path.basename(store.path.rstrip("/"))
        n = log_analysis(wb, name, out_dir, {"sweep": name, "analysis_dir": os.path.abspath(out_dir)})
        print(f"logged {n} analysis figures/tables to W&B ({wb['mode']}, group {name})", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the analysis is on disk; W&B is an extra
        print(f"warning: W&B: the analysis was written but not logged: {type(exc).__name__}: {one_line(exc)}",
              file=sys.stderr)
