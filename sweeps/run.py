"""Ray Tune execution: one trial per pack of points, written to the store and to W&B.

The driver (`run_sweep`) connects to Ray (an embedded local Ray on loopback unless
`ray.address` or RAY_ADDRESS names a cluster), skips the points already done, cleans orphans,
and runs the remaining packs with Ray Tune. A worker (`train_trial`) gets plain data only:
it rebuilds the PointSpecs, calls ``toymodels.train`` with a callback that buffers the
checkpoints and logs to W&B, then commits its rows to the store. This module imports neither
Hydra nor the plan at module level, so workers never load them.
"""

import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

from toymodels.config import DataConfig, ModelConfig, PointSpec, TrainConfig

from sweeps import tracking
from sweeps.schema import POINT_GROUPS, UsageError
from sweeps.store import Store, TrialWriter, now_iso, points_table, weights_history_bytes

REPORT_EVERY_S = 2.0      # a worker reports progress at most this often (each report is a round trip)
POINTS_EVERY_S = 10.0     # the driver rewrites points.parquet at most this often while running


def cell_settings(base: dict, swept: list[str], values) -> dict:
    """Nested model/data/train dicts of the base config with the swept values set."""
    settings = {g: dict(base[g]) for g in POINT_GROUPS}
    for key, value in zip(swept, values):
        group, name = key.split(".", 1)
        settings[group][name] = value
    return settings


def build_spec(settings: dict, seed: int) -> PointSpec:
    """A validated PointSpec from plain settings (raises ValueError("key: message"))."""
    return PointSpec(model=ModelConfig(**settings["model"]), data=DataConfig(**settings["data"]),
                     train=TrainConfig(**settings["train"]), seed=int(seed))


# ----------------------------------------------------------------------------- worker side

def train_trial(config: dict, packs: dict, ctx: dict) -> None:
    """Ray Tune function trainable: train one pack, commit its rows, report progress."""
    import ray
    import toymodels
    import torch
    from ray import tune

    key = config["trial_key"]
    pack = packs[key]
    started = datetime.now(timezone.utc)
    attempt = _count_attempt() if ctx["inject_failures"] else None
    specs = [build_spec(cell_settings(pack["base"], pack["swept"], values), seed)
             for values, seed in zip(pack["values"], pack["seeds"])]
    n, steps = len(specs), specs[0].train.steps

    runtime = ray.get_runtime_context()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = _device(ctx["device"], gpu_ids, torch)
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    toymodels.tune_allocator()  # this worker process exists to train: keep big tensors off mmap
    info = {"node_id": runtime.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "device": device,
            "gpu_ids": json.dumps(gpu_ids), "gpu_fraction": float(runtime.get_assigned_resources().get("GPU", 0.0)),
            "attempt": attempt, "started_at": started}

    store = Store(ctx["sweep_uri"])
    history = weights_history_bytes(specs[0]) <= ctx["weights_history_max_bytes"]
    writer = TrialWriter(store, key, pack["point_ids"], weights_history=history)
    varied = {k: [v[j] for v in pack["values"]] for j, k in enumerate(pack["swept"])}
    run = _guard(lambda: tracking.TrialRun(ctx["wandb"], ctx["sweep"], key, _wandb_config(pack, varied, ctx)))
    last = [time.monotonic()]

    def callback(ck) -> None:
        writer.add(ck)
        if run is not None:
            _guard(lambda: run.log(ck))
        if not ck.final and time.monotonic() - last[0] >= REPORT_EVERY_S:
            last[0] = time.monotonic()
            tune.report({"model_steps": n * int(ck.step), "points": n, "points_done": 0})

    try:
        result = toymodels.train(specs, device=device, compile=ctx["compile"], callback=callback)
        writer.commit_metrics()
        if attempt is not None and attempt <= ctx["inject_failures"]:
            raise RuntimeError(f"injected failure: ray.inject_failures={ctx['inject_failures']}, attempt {attempt}")
        done = writer.commit_rest(result, info)
    except BaseException:
        writer.abort()
        if run is not None:
            _guard(run.abort)
        raise
    if run is not None:
        _guard(lambda: run.finish(writer, done, varied, pack["seeds"]))
    diverged = int((result.diverged_step >= 0).sum())
    tune.report({"model_steps": n * steps, "points": n, "points_done": n, "diverged": diverged,
                 "train_seconds": result.seconds})


def _device(want: str, gpu_ids: list[str], torch) -> str:
    if want == "cpu":
        return "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ray.device=cuda but torch sees no CUDA device here (Ray assigned GPUs {gpu_ids})")
    return "cuda" if (want == "cuda" or gpu_ids) and torch.cuda.is_available() else "cpu"


def _count_attempt() -> int:
    """Attempt number of this trial, kept in a Tune checkpoint (restored by Ray on retry)."""
    from ray import tune

    attempt = 1
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            with open(os.path.join(d, "attempt.json")) as f:
                attempt = json.load(f)["attempt"] + 1
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "attempt.json"), "w") as f:
            json.dump({"attempt": attempt}, f)
        tune.report({"model_steps": 0, "points_done": 0, "attempt": attempt},
                    checkpoint=tune.Checkpoint.from_directory(d))
    return attempt


def _wandb_config(pack: dict, varied: dict, ctx: dict) -> dict:
    """The trial's settings: constant ones by group, the varied ones as lists per point."""
    base = {g: dict(pack["base"][g]) for g in POINT_GROUPS}
    for k in varied:
        group, name = k.split(".", 1)
        base[group].pop(name, None)
    return {**base, "varied": varied, "sweep": ctx["sweep"], "trial_key": pack["trial_key"],
            "n_points": len(pack["point_ids"]), "point_ids": pack["point_ids"], "seeds": pack["seeds"]}


def _guard(fn):
    """Run a W&B step; a W&B failure is reported but never costs the trial its rows."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - tracking is best-effort by design
        print(f"warning: W&B: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------- driver side

def connect(ray_cfg: dict) -> bool:
    """Attach to the configured cluster or start an embedded local Ray; True if we started it."""
    address = ray_cfg["address"] or os.environ.get("RAY_ADDRESS")
    loopback = ray_cfg["host"] in ("127.0.0.1", "localhost", "::1")
    if not address and loopback:
        _loopback_only()
    import ray

    quiet = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    if address:
        ray.init(address=address, **quiet)
        return False
    extra = {} if loopback else {"_node_ip_address": ray_cfg["host"]}
    ray.init(address="local", num_cpus=ray_cfg["num_cpus"], num_gpus=ray_cfg["num_gpus"], **quiet, **extra)
    return True


def _loopback_only() -> None:
    """Make Ray 2.60 advertise and bind 127.0.0.1 (it otherwise resolves it to the outward IP).

    With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray treats the machine as single-node: every
    server of the embedded cluster (GCS, raylet, workers) listens on loopback only.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        constants.ENABLE_RAY_CLUSTER = False


def check_resources(ray_cfg: dict) -> None:
    """Refuse, before anything is queued, trials that no node of the cluster could ever run."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = ray_cfg["cpus_per_trial"], ray_cfg["gpus_per_trial"]
    most_gpus = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    most_cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    if gpus > 0 and most_gpus == 0:
        raise UsageError(f"ray.gpus_per_trial: {gpus:g} GPU per trial asked for, but the Ray cluster has no GPU; "
                         "use ray.gpus_per_trial=0 to train on CPUs")
    if gpus > most_gpus:
        raise UsageError(f"ray.gpus_per_trial: {gpus:g} GPUs per trial, but no node has more than {most_gpus:g}")
    if cpus > most_cpus:
        raise UsageError(f"ray.cpus_per_trial: {cpus:g} CPUs per trial, but no node has more than {most_cpus:g}")


class Progress:
    """Tune callback: the live progress line, failed trials, and points.parquet kept current."""

    def __init__(self, plan, store: Store, trials: list, outcomes, already_done: int):
        self.plan, self.store = plan, store
        self.trial_points = {t.trial_key: [p.point_id for p in t.points] for t in trials}
        self.sizes = {t.trial_key: len(t.points) for t in trials}
        self.steps = {t.trial_key: plan.spec(t.points[0]).train.steps for t in trials}
        self.outcomes = [outcomes]
        self.total_points = len(plan.points)
        self.points_done = already_done
        self.model_steps_todo = sum(self.sizes[k] * self.steps[k] for k in self.sizes)
        self.finished_steps = 0
        self.running: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self.start = time.monotonic()
        self.last_print = self.last_points = 0.0
        self.tty = sys.stderr.isatty()

    # Tune's callback interface (forwarded by `_tune_callback`, so this module needs no ray import).
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.running[trial.config["trial_key"]] = int(result.get("model_steps", 0))
        self.show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = trial.config["trial_key"]
        self.running.pop(key, None)
        self.finished_steps += self.sizes[key] * self.steps[key]
        self.points_done += self.sizes[key]
        done = self.store.read_bytes(f"done/{key}.parquet")
        if done is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq
            from sweeps.store import DONE_SCHEMA, conform
            self.outcomes.append(conform(pq.read_table(pa.BufferReader(done)), DONE_SCHEMA))
        self.show()
        if time.monotonic() - self.last_points >= POINTS_EVERY_S:
            self.write_points()

    def on_trial_recover(self, iteration, trials, trial, **info):
        key = trial.config["trial_key"]
        self.running.pop(key, None)
        print(f"[{self.plan.name}] trial {key} failed (attempt {trial.num_failures}), retrying: "
              f"{_trial_error(trial)}", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        key = trial.config["trial_key"]
        self.running.pop(key, None)
        self.finished_steps += self.sizes[key] * self.steps[key]
        for p in self.trial_points[key]:
            self.failed[p] = key
        print(f"[{self.plan.name}] trial {key} failed {trial.num_failures} times, its "
              f"{self.sizes[key]} points are marked failed: {_trial_error(trial)}", file=sys.stderr, flush=True)

    def table(self):
        import pyarrow as pa
        return pa.concat_tables(self.outcomes)

    def write_points(self):
        self.last_points = time.monotonic()
        self.store.write_table("points.parquet", points_table(self.plan, self.table(), self.failed))

    def counts(self) -> dict:
        status = self.table().column("status").to_pylist()
        done, diverged = status.count("done"), status.count("diverged")
        failed = len(self.failed)
        return {"points": self.total_points, "done": done, "diverged": diverged, "failed": failed,
                "pending": self.total_points - done - diverged - failed}

    def show(self, force: bool = False, end: bool = False):
        now = time.monotonic()
        if not (force or end or now - self.last_print >= (1.0 if self.tty else 10.0)):
            return
        self.last_print = now
        elapsed = max(now - self.start, 1e-9)
        steps_now = self.finished_steps + sum(self.running.values())
        rate = steps_now / elapsed
        left = self.model_steps_todo - steps_now
        eta = _duration(left / rate) if rate > 0 and left > 0 else "-"
        line = (f"[{self.plan.name}] points {self.points_done}/{self.total_points}"
                f"{f' ({len(self.failed)} failed)' if self.failed else ''} | {rate:,.0f} model-steps/s"
                f" | elapsed {_duration(elapsed)} | ETA {eta}")
        if self.tty:
            print("\r" + line.ljust(100), end="\n" if end else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _tune_callback(progress: Progress):
    from ray import tune

    class _Callback(tune.Callback):
        def on_trial_result(self, *a, **k):
            progress.on_trial_result(*a, **k)

        def on_trial_complete(self, *a, **k):
            progress.on_trial_complete(*a, **k)

        def on_trial_recover(self, *a, **k):
            progress.on_trial_recover(*a, **k)

        def on_trial_error(self, *a, **k):
            progress.on_trial_error(*a, **k)

    return _Callback()


def run_sweep(plan) -> int:
    """Run (or resume) a planned sweep; returns the process exit code."""
    cfg = plan.config
    store = Store.for_sweep(cfg["store"], plan.name)
    existing = store.read_json("sweep.json")
    if existing and existing.get("grid_hash") != plan.grid_hash:
        raise UsageError(f"sweep.name: {store.uri} already holds a different grid "
                         f"({existing.get('counts', {}).get('points', '?')} points, grid_hash "
                         f"{existing.get('grid_hash')}); choose a new sweep.name=… or delete that directory")
    lock = store.lock()
    lock.check()
    wb = tracking.check(cfg["wandb"], store.path if store.local else None)
    cfg["wandb"]["mode"] = wb["mode"]  # config.yaml records the mode actually used
    done_ids = set(store.read_done().column("point_id").to_pylist()) if existing else set()
    if existing and all(p.point_id in done_ids for p in plan.points):
        print(f"[{plan.name}] all {len(plan.points)} points are done: {store.uri}", file=sys.stderr)
        return 0

    started = connect(cfg["ray"])
    import ray
    try:
        check_resources(cfg["ray"])
        with lock:
            return _run_locked(plan, store, existing, wb)
    except KeyboardInterrupt:
        print(f"\n[{plan.name}] interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if started:
            ray.shutdown()


def _run_locked(plan, store: Store, existing: dict | None, wb: dict) -> int:
    import yaml
    from ray import tune

    cfg = plan.config
    created = (existing or {}).get("created") or now_iso()
    store.write_bytes("config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    removed = store.clean_orphans()
    outcomes = store.read_done()
    done_ids = set(outcomes.column("point_id").to_pylist())
    todo = [p for p in plan.points if p.point_id not in done_ids]
    trials = plan.trials(todo)
    progress = Progress(plan, store, trials, outcomes, already_done=len(done_ids))
    _write_sweep_json(store, plan, created, progress.counts(), len(trials))
    progress.write_points()
    resumed = f", resuming with {len(done_ids)} done" if done_ids else ""
    cleaned = f", {removed} orphan files removed" if removed else ""
    print(f"[{plan.name}] {len(todo)} points to train in {len(trials)} trials{resumed}{cleaned} -> {store.uri}",
          file=sys.stderr)

    if trials:
        ray_cfg = cfg["ray"]
        ctx = {"sweep_uri": store.uri, "sweep": plan.name, "wandb": wb, "device": ray_cfg["device"],
               "compile": ray_cfg["compile"], "cpus_per_trial": ray_cfg["cpus_per_trial"],
               "inject_failures": ray_cfg["inject_failures"],
               "weights_history_max_bytes": cfg["sweep"]["weights_history_max_bytes"]}
        packs = {t.trial_key: plan.trial_payload(t) for t in trials}
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: stop; rerun to resume
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables on the console
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
                name=datetime.now().strftime("run-%Y%m%d-%H%M%S"), storage_path=f"{store.uri}/ray",
                verbose=0, failure_config=tune.FailureConfig(max_failures=ray_cfg["max_failures"]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=[_tune_callback(progress)]),
        )
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures are reported by Progress
        try:
            grid = tuner.fit()
        finally:  # also on Ctrl-C: points.parquet and sweep.json say what is done so far
            progress.write_points()
            _write_sweep_json(store, plan, created, progress.counts(), len(trials))
        for result in grid:
            if result.error is not None:
                key = result.config["trial_key"]
                for pid in progress.trial_points[key]:
                    progress.failed.setdefault(pid, key)
    progress.show(end=True)

    progress.write_points()
    counts = progress.counts()
    _write_sweep_json(store, plan, created, counts, len(trials))
    try:
        points = store.read_bytes("points.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq
        tracking.log_sweep_summary(wb, plan.name, pq.read_table(pa.BufferReader(points)), cfg)
    except Exception as exc:  # noqa: BLE001 - tracking is best-effort
        print(f"warning: W&B summary: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"[{plan.name}] {counts['done']} done, {counts['diverged']} diverged, {counts['failed']} failed, "
          f"{counts['pending']} pending of {counts['points']} points -> {store.uri}", file=sys.stderr)
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1


def _write_sweep_json(store: Store, plan, created: str, counts: dict, n_trials: int) -> None:
    from sweeps.store import SCHEMA_VERSION
    store.write_json("sweep.json", {
        "name": plan.name, "schema_version": SCHEMA_VERSION, "grid_hash": plan.grid_hash,
        "swept": plan.swept, "experiment": plan.config.get("experiment"), "seeds": plan.config["sweep"]["seeds"],
        "counts": counts, "trials_last_run": n_trials, "created": created, "updated": now_iso()})


def _trial_error(trial) -> str:
    """The last line of a failed trial's traceback (its exception and message)."""
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path) as f:
            return _last_line(f.read())
    return "see the trial's error file under ray/"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1].strip() if lines else "unknown error")[:300]
