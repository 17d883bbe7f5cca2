"""The driver: runs (or resumes) a planned sweep, and is the only process that commits.

    checks (store, memory, grid) → lock (+1 generation) → reconcile → Ray → Tune trials → commits
                                                         ↑ every exit path reconciles again ↓

Before anything is created or started the store is checked (sweeps.store.preflight), one
point's memory is compared with this machine's, and a store that holds another grid is
refused. Then the driver takes the sweep's lock (sweeps.lock), which gives it the next
generation, and reconciles the store: staging and parts no commit claims, and the saved
training states of committed trials, are removed, and ``points.parquet`` and ``sweep.json``
are rewritten from the done markers. Points already
done are skipped; the rest are packed into trials and run with Ray Tune (sweeps.trial). Each
trial stages its rows and reports the staging folder; the driver commits it (parts, then the
done marker), verifying its lock first. On every way out — all done, finished, failed,
Ctrl-C, SIGTERM, an error — the store is reconciled again and the lock released.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sys
import time
from datetime import datetime

import numpy as np
import yaml

from sweeps import tracking
from sweeps.cluster import check_address, check_resources, connect, stop_embedded
from sweeps.errors import UsageError, one_line
from sweeps.lock import DriverLock, LockLost, now_iso
from sweeps.plan import Plan, output_bytes
from sweeps.progress import Progress
from sweeps.store import SweepStore, child_uri, preflight, size_text
from sweeps.tables import SCHEMA_VERSION, points_table

POINTS_EVERY_S = 10.0  # while running, points.parquet is rewritten at most this often (and >= 5x its write time)
STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES)


def run_sweep(plan: Plan) -> int:
    """Run (or resume) a planned sweep; returns the process exit code (bad input: UsageError)."""
    cfg = plan.config
    check_address(cfg["ray"])
    _check_memory(plan)
    store = preflight(cfg["store"], plan.name, int(output_bytes(plan) * _share_left(cfg["store"], plan)))
    _check_grid(store, store.read_json("sweep.json"), plan)
    wb = tracking.check(cfg["wandb"], store.path if store.local else None, len(plan))
    cfg["wandb"]["mode"] = wb["mode"]  # config.yaml records the mode actually used
    created = _first_missing(store.path) if store.local else None
    lock = DriverLock(store, ttl=cfg["sweep"]["lease_ttl_s"])
    lock.acquire()
    try:
        _check_grid(store, store.read_json("sweep.json"), plan)  # again, now that no one else can write it
        return Run(plan, store, lock, wb).run()
    except UsageError:  # refused once Ray could tell (resources): leave no trace of a new sweep
        if created:
            lock.release()
            shutil.rmtree(created, ignore_errors=True)
        raise
    except OSError as exc:  # the store failed under us (disk full, read-only, I/O): what is committed stays
        if exc.errno not in STORE_ERRNOS:
            raise
        print(f"error: store: {store.uri}: {one_line(exc)}; run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        lock.release()


def _first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (None if it all exists)."""
    missing = None
    while not os.path.lexists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _share_left(root: str, plan: Plan) -> float:
    """Share of the plan an existing sweep.json says is not finished (1 when unknown)."""
    try:
        counts = SweepStore.for_sweep(root, plan.name).read_json("sweep.json")["counts"]
        return min(1.0, max(0.0, 1 - (counts["done"] + counts["diverged"]) / len(plan)))
    except Exception:  # noqa: BLE001 - no or unreadable sweep.json: preflight names the problem
        return 1.0


def _check_grid(store: SweepStore, existing: dict | None, plan: Plan) -> None:
    if existing and existing.get("grid_hash") != plan.grid_hash:
        raise UsageError(f"sweep.name: {store.uri} already holds a different grid "
                         f"({existing.get('counts', {}).get('points', '?')} points, grid_hash "
                         f"{existing.get('grid_hash')}); choose a new sweep.name=… or delete that directory")


def _check_memory(plan: Plan) -> None:
    """Refuse a point that cannot fit this machine's memory when the sweep runs here."""
    ray_cfg = plan.config["ray"]
    if ray_cfg["address"] or os.environ.get("RAY_ADDRESS"):
        return  # a cluster: checked against its nodes once connected (sweeps.cluster.check_resources)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if plan.point_bytes > total:
        raise UsageError(f"model: one point needs about {size_text(plan.point_bytes)} to train, more than this "
                         f"machine's memory ({size_text(total)}); make model.n_features or train.batch_size smaller")


class Run:
    """One run of the driver under the lock: reconcile, train what is left, commit, reconcile."""

    def __init__(self, plan: Plan, store: SweepStore, lock: DriverLock, wb: dict):
        self.plan, self.store, self.lock, self.wb = plan, store, lock, wb
        self.generation = lock.generation
        previous = store.read_json("sweep.json") or {}
        self.created = previous.get("created") or now_iso()
        self.outcomes = []
        self.progress: Progress | None = None
        self.n_trials = previous.get("trials_last_run", 0)  # until this run packs its own
        self.removed = 0
        self.last_points, self.points_cost = 0.0, 0.0

    # ------------------------------------------------------------------ the store's state
    def done_table(self):
        import pyarrow as pa
        return pa.concat_tables(self.outcomes)

    def reconcile(self) -> dict:
        """Clean what no commit claims; rewrite points.parquet and sweep.json from the done markers."""
        self.removed = self.store.clean()
        self.store.drop_saved_states()
        self.outcomes = [self.store.read_done()]
        return self.write_points(self.progress.failed if self.progress else {}, only_if_changed=True)

    def write_points(self, failed: dict, only_if_changed: bool = False) -> dict:
        started = time.monotonic()
        table = points_table(self.plan, self.done_table(), failed)
        if not (only_if_changed and _same(self.store.read_table("points.parquet"), table)):
            self.store.write_table("points.parquet", table)
        status = table.column("status").to_pylist()
        counts = {"points": len(status), **{s: status.count(s) for s in ("done", "diverged", "failed", "pending")}}
        meta = {"name": self.plan.name, "schema_version": SCHEMA_VERSION, "grid_hash": self.plan.grid_hash,
                "swept": self.plan.swept, "experiment": self.plan.config.get("experiment"),
                "seeds": self.plan.seeds, "counts": counts, "trials_last_run": self.n_trials,
                "created": self.created}
        old = self.store.read_json("sweep.json") or {}
        if not (only_if_changed and {k: old.get(k) for k in meta} == meta):
            self.store.write_json("sweep.json", {**meta, "generation": self.generation, "updated": now_iso()})
        self.last_points = time.monotonic()
        self.points_cost = self.last_points - started
        return counts

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        plan, store = self.plan, self.store
        config_yaml = yaml.safe_dump(plan.config, sort_keys=False).encode()
        if store.read_bytes("config.yaml") != config_yaml:
            store.write_bytes("config.yaml", config_yaml)
        self.reconcile()
        done_ids = set(self.done_table().column("point_id").to_pylist())
        todo = np.flatnonzero(~np.isin(plan.point_ids, np.array(sorted(done_ids), dtype=plan.point_ids.dtype)))
        cleaned = f", {self.removed} stale files removed" if self.removed else ""
        if len(todo) == 0:
            print(f"[{plan.name}] all {len(plan)} points are done{cleaned}: {store.uri}", file=sys.stderr)
            return 0
        interrupted = False
        started = connect(plan.config["ray"])
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            check_resources(plan.config["ray"], plan.point_bytes)
            trials = plan.trials(todo, _trial_budget(plan.config["ray"]))
            self.n_trials = len(trials)
            resumed = f", resuming with {len(done_ids)} done" if done_ids else ""
            print(f"[{plan.name}] {len(todo)} points to train in {len(trials)} trials{resumed}{cleaned} "
                  f"-> {store.uri}", file=sys.stderr)
            self.progress = Progress(plan.name, len(plan), len(done_ids), {
                t.trial_key: (len(t.points), plan.spec(int(t.points[0])).train.steps) for t in trials})
            self.trial_points = {t.trial_key: plan.point_ids[t.points].tolist() for t in trials}
            self.tune(trials)
        except KeyboardInterrupt:
            interrupted = True
        except LockLost as exc:
            print(f"error: {one_line(exc)}; stopped without committing more", file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if started:  # first, so that no worker of this run writes after the reconciliation
                stop_embedded()
            counts = self.reconcile()
        if interrupted:
            print(f"\n[{plan.name}] interrupted; run the same command again to resume", file=sys.stderr)
            return 130
        self.progress.show(end=True)
        self.summary_to_wandb()
        print(f"[{plan.name}] {counts['done']} done, {counts['diverged']} diverged, {counts['failed']} failed, "
              f"{counts['pending']} pending of {counts['points']} points -> {store.uri}", file=sys.stderr)
        return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1

    def tune(self, trials: list) -> None:
        from ray import tune

        plan, ray_cfg = self.plan, self.plan.config["ray"]
        keys = sorted(t.trial_key for t in trials)
        hit = keys if ray_cfg["inject_failures_trials"] is None else keys[: ray_cfg["inject_failures_trials"]]
        ctx = {"sweep_uri": self.store.uri, "sweep": plan.name, "wandb": self.wb, "device": ray_cfg["device"],
               "compile": ray_cfg["compile"], "cpus_per_trial": ray_cfg["cpus_per_trial"],
               "generation": self.generation, "inject_failures": ray_cfg["inject_failures"], "inject_keys": hit,
               "weights_history_max_bytes": plan.config["sweep"]["weights_history_max_bytes"],
               "checkpoint_every_s": plan.config["sweep"]["checkpoint_every_s"]}
        packs = {t.trial_key: plan.trial_payload(t) for t in trials}
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: stop; rerun to resume
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables on the console
        from sweeps.trial import train_trial

        trainable = tune.with_resources(tune.with_parameters(train_trial, packs=packs, ctx=ctx),
                                        {"cpu": ray_cfg["cpus_per_trial"], "gpu": ray_cfg["gpus_per_trial"]})
        name_of = lambda trial: trial.config["trial_key"]  # noqa: E731
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_key": tune.grid_search(list(packs))},
            tune_config=tune.TuneConfig(num_samples=1, reuse_actors=ray_cfg["reuse_actors"],
                                        max_concurrent_trials=ray_cfg["max_concurrent_trials"],
                                        trial_name_creator=name_of, trial_dirname_creator=name_of),
            run_config=tune.RunConfig(
                name=datetime.now().strftime("run-%Y%m%d-%H%M%S"), storage_path=child_uri(self.store.uri, "ray"),
                verbose=0, failure_config=tune.FailureConfig(max_failures=ray_cfg["max_failures"]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=[_tune_callback(self)]),
        )
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures are reported by the callback
        tuner.fit()
        # a trial that ended without completing or erroring (its worker lost with the run) stays pending

    # ------------------------------------------------------------------ Tune's events
    def on_result(self, trial, result: dict) -> None:
        self.progress.reported(trial.config["trial_key"], int(result.get("model_steps", 0)))

    def on_complete(self, trial) -> None:
        key = trial.config["trial_key"]
        staged = (trial.last_result or {}).get("staged")
        if not staged or SweepStore.staged_generation(staged) != self.generation:
            self.failed(key, f"finished without staging rows of generation {self.generation}")
            return
        self.lock.verify()
        try:
            done = self.store.commit(staged, key)
        except (OSError, ValueError) as exc:
            self.failed(key, f"its rows could not be committed: {one_line(exc)}")
            return
        self.outcomes.append(done)
        self.progress.ended(key)
        if time.monotonic() - self.last_points >= max(POINTS_EVERY_S, 5 * self.points_cost):
            self.write_points(self.progress.failed)

    def on_recover(self, trial) -> None:
        key = trial.config["trial_key"]
        self.progress.retrying(key)
        print(f"[{self.plan.name}] trial {key} failed (attempt {trial.num_failures}), retrying: "
              f"{_trial_error(trial)}", file=sys.stderr, flush=True)

    def on_error(self, trial) -> None:
        self.failed(trial.config["trial_key"], _trial_error(trial), attempts=trial.num_failures)

    def failed(self, key: str, why: str, attempts: int | None = None) -> None:
        times = f" {attempts} times" if attempts else ""
        print(f"[{self.plan.name}] trial {key} failed{times}, its {len(self.trial_points[key])} points are "
              f"marked failed: {why}", file=sys.stderr, flush=True)
        self.progress.ended(key, self.trial_points[key])

    def summary_to_wandb(self) -> None:
        try:
            tracking.log_sweep_summary(self.wb, self.plan.name, self.store.read_table("points.parquet"),
                                       self.plan.config, list(self.plan.swept))
        except Exception as exc:  # noqa: BLE001 - tracking is best-effort
            print(f"warning: W&B summary: {type(exc).__name__}: {exc}", file=sys.stderr)


def _tune_callback(run: Run):
    from ray import tune

    class _Callback(tune.Callback):
        """Forwards Tune's trial events to the run. Tune pickles its callbacks with the experiment
        state; the run (lock, store, progress) is live state of this process and is left out."""

        def __init__(self, run: Run):
            self.run = run

        def __getstate__(self):
            return {"run": None}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.run.on_result(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.run.on_complete(trial)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.run.on_recover(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.run.on_error(trial)

    return _Callback(run)


def _trial_budget(ray_cfg: dict) -> int | None:
    """Memory a trial may use: its share (by CPUs) of the largest node's memory, when known."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    best = max(nodes, key=lambda r: r.get("memory", 0.0), default={})
    if not best.get("memory") or not best.get("CPU"):
        return None
    return int(best["memory"] * min(1.0, ray_cfg["cpus_per_trial"] / best["CPU"]))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _same(a, b) -> bool:
    """Whether two tables hold the same values (NaN equals NaN, null equals null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if a is None or a.num_rows != b.num_rows or not a.schema.equals(b.schema, check_metadata=True):
        return False
    for x, y in zip(a.columns, b.columns):
        if x.equals(y):
            continue
        if not pa.types.is_floating(x.type):
            return False
        equal = pc.fill_null(pc.equal(x, y), False)
        nan = pc.fill_null(pc.and_(pc.is_nan(x), pc.is_nan(y)), False)
        if not pc.all(pc.or_(pc.or_(equal, nan), pc.and_(pc.is_null(x), pc.is_null(y)))).as_py():
            return False
    return True


def _trial_error(trial) -> str:
    """The last line of a failed trial's traceback (its exception and message)."""
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path) as f:
            return one_line(f.read(), last=True)
    return "see the trial's error file under ray/"
