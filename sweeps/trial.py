"""The trial worker: a Ray Tune function trainable that trains one pack of points.

It gets plain data only (the pack's settings and seeds, and the driver's context), rebuilds
the PointSpecs, calls ``toymodels.train`` with a callback that buffers the checkpoints and
logs to W&B, stages the trial's rows (sweeps.writer) and reports the staging folder in its
last result. The driver commits it. This module imports neither Hydra nor the plan, so
workers never load them.

Preemption: every ``sweep.checkpoint_every_s`` the trainer hands over its training state
(``toymodels.TrainState``: parameters, optimiser moments, step and the checkpoints so far;
the data stream is stateless), which is saved as the trial's Ray Tune checkpoint. A trial
that Ray retries (its worker or node died) continues from its own last checkpoint; a trial of
a later run of the sweep (the driver was killed, the SLURM job hit its time limit) continues
from the newest checkpoint an earlier run saved for the same trial key — the same points.
On CPU the result equals an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import tempfile
import time
from datetime import datetime, timezone

from sweeps import tracking
from sweeps.points import POINT_GROUPS, build_spec, cell_settings
from sweeps.store import SweepStore
from sweeps.writer import TrialWriter, weights_history_bytes

REPORT_EVERY_S = 2.0  # a worker reports progress at most this often (each report is a round trip)
STATE_FILE = "train_state.pt"  # a Tune checkpoint's training state (torch.save of a toymodels.TrainState)
META_FILE = "state.json"       # beside it: {"attempt", "step"}, read without loading the state


def train_trial(config: dict, packs: dict, ctx: dict) -> None:
    """Train one pack, stage its rows, report progress and, last, the staging folder."""
    import ray
    import toymodels
    import torch
    from ray import tune

    key = config["trial_key"]
    pack = packs[key]
    started = datetime.now(timezone.utc)
    inject = ctx["inject_failures"] if key in ctx["inject_keys"] else 0
    attempts, state = _restore(ctx["sweep_uri"], key, torch)
    attempt = attempts + 1
    if ctx["inject_failures"]:  # count this attempt even if it dies before its first save
        _save(attempt, state, torch, {"model_steps": 0, "points_done": 0, "attempt": attempt})
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
            "attempt": attempt if ctx["inject_failures"] else None, "started_at": started,
            "resumed_step": None if state is None else int(state.step)}

    history = weights_history_bytes(specs[0]) <= ctx["weights_history_max_bytes"]
    writer = TrialWriter(SweepStore(ctx["sweep_uri"]), key, pack["point_ids"], ctx["generation"],
                         weights_history=history)
    varied = {k: [v[j] for v in pack["values"]] for j, k in enumerate(pack["swept"])}
    per_point = ctx["wandb"].get("runs") == "point"
    run = None if per_point else _guard(
        lambda: tracking.TrialRun(ctx["wandb"], ctx["sweep"], key, _wandb_config(pack, varied, ctx)))
    last = [time.monotonic()]

    def callback(ck) -> None:
        writer.add(ck)
        if run is not None:
            _guard(lambda: run.log(ck))
        if not ck.final and time.monotonic() - last[0] >= REPORT_EVERY_S:
            last[0] = time.monotonic()
            tune.report({"model_steps": n * int(ck.step), "points": n, "points_done": 0})

    every = ctx["checkpoint_every_s"]
    on_state = None if every is None else (lambda st: _save(attempt, st, torch, {
        "model_steps": n * int(st.step), "points": n, "points_done": 0}))
    resumable = {"resume": state, "on_state": on_state, "state_every_s": float(every or 0.0)}
    try:
        for ck in state.history if state is not None else ():
            callback(ck)  # the checkpoints before the saved step, into the rows and W&B again
        result = toymodels.train(specs, device=device, compile=ctx["compile"], callback=callback, **resumable)
        writer.stage_metrics()
        if attempt <= inject:
            raise RuntimeError(f"injected failure: ray.inject_failures={inject}, attempt {attempt}")
        done = writer.stage_rest(result, info)
    except BaseException:
        writer.abort()
        if run is not None:
            _guard(run.abort)
        raise
    if run is not None:
        _guard(lambda: run.finish(writer, done, varied, pack["seeds"]))
    if per_point:
        _guard(lambda: tracking.log_point_runs(ctx["wandb"], ctx["sweep"], pack, writer, done))
    diverged = int((result.diverged_step >= 0).sum())
    tune.report({"model_steps": n * steps, "points": n, "points_done": n, "diverged": diverged,
                 "train_seconds": result.seconds, "staged": writer.staged})


def _device(want: str, gpu_ids: list[str], torch) -> str:
    if want == "cpu":
        return "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ray.device=cuda but torch sees no CUDA device here (Ray assigned GPUs {gpu_ids})")
    return "cuda" if (want == "cuda" or gpu_ids) and torch.cuda.is_available() else "cpu"


def _restore(sweep_uri: str, key: str, torch) -> tuple[int, object]:
    """(attempts so far, the saved TrainState or None) of this trial: its own Tune checkpoint when
    Ray retries it, else the newest state an earlier run of the sweep saved for the same trial key."""
    from ray import tune

    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            with open(os.path.join(d, META_FILE)) as f:
                attempts = json.load(f)["attempt"]
            path = os.path.join(d, STATE_FILE)
            return attempts, (torch.load(path, weights_only=False) if os.path.exists(path) else None)
    store = SweepStore(sweep_uri)
    saved = []  # (step, folder) of each state an earlier run saved for this trial
    for run in store.list("ray", dirs=True):  # Tune's folders: ray/<run>/<trial_key>/checkpoint_<n>/
        for name in store.list(f"ray/{run}/{key}", dirs=True):
            folder = f"ray/{run}/{key}/{name}"
            meta = _read_saved(store, f"{folder}/{META_FILE}", json.loads) if name.startswith("checkpoint_") else None
            if meta and meta.get("step") is not None:
                saved.append((meta["step"], folder))
    for _, folder in sorted(saved, reverse=True):  # the newest state that reads whole
        state = _read_saved(store, f"{folder}/{STATE_FILE}", lambda b: torch.load(io.BytesIO(b), weights_only=False))
        if state is not None:
            return 0, state
    return 0, None


def _read_saved(store: SweepStore, rel: str, parse):
    """``parse`` of a saved file's bytes; None if it is missing or cut short (Tune copies a
    checkpoint into the sweep file by file, so a run killed mid-copy leaves partial files)."""
    data = store.read_bytes(rel)
    if data is None:
        return None
    try:
        return parse(data)
    except (ValueError, EOFError, RuntimeError, pickle.UnpicklingError) as e:  # json, torch.load: a partial file
        print(f"tms: skipping the partial saved state {rel} ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def _save(attempt: int, state, torch, metrics: dict) -> None:
    """Report ``metrics`` with a Tune checkpoint holding the attempt count and the training state."""
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, META_FILE), "w") as f:
            json.dump({"attempt": attempt, "step": None if state is None else int(state.step)}, f)
        if state is not None:
            torch.save(state, os.path.join(d, STATE_FILE))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


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
