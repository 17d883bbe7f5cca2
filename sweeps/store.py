"""The Parquet store of one sweep: ``<store>/<sweep.name>/`` (the contract is docs/store.md).

Every file is written under a hidden temporary name and moved into place, so readers never
see half a file. A trial commits metrics → features → weights → ``done/<trial_key>``; part
files without a done marker are orphans of a crashed attempt and are deleted by the next
driver before any trial runs. Workers use `TrialWriter`; the driver uses the rest.
"""

import json
import os
import socket
import uuid
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeps.schema import UsageError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Store versions this code reads and resumes (version 1 stores lack the columns added in 2)."""
PART_DIRS = ("metrics", "features", "weights")

METRICS_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("step", pa.int64()), ("loss", pa.float32()),
    ("train_loss", pa.float32()), ("frob", pa.float32()), ("d_star", pa.float32()), ("lr", pa.float32()),
    ("reconstruction", pa.float32()), ("penalty", pa.float32()),
])
FEATURES_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("step", pa.int64()), ("feature", pa.int32()), ("norm", pa.float32()),
    ("interference", pa.float32()), ("dimensionality", pa.float32()), ("bias", pa.float32()),
    ("importance", pa.float32()), ("density", pa.float32()),
])
WEIGHTS_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("n_hidden", pa.int32()), ("n_features", pa.int32()),
    ("W", pa.list_(pa.float32())), ("b", pa.list_(pa.float32())), ("W2", pa.list_(pa.float32())),
    ("step", pa.int64()),
])
DONE_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("trial_key", pa.string()), ("status", pa.string()),
    ("final_loss", pa.float64()), ("final_d_star", pa.float64()), ("diverged_step", pa.int64()),
    ("selection_loss", pa.float64()), ("selection_reconstruction", pa.float64()), ("selection_se", pa.float64()),
    ("node_id", pa.string()), ("node_ip", pa.string()), ("device", pa.string()),
    ("gpu_ids", pa.string()), ("gpu_fraction", pa.float64()), ("attempt", pa.int64()),
    ("started_at", pa.timestamp("ms", tz="UTC")), ("finished_at", pa.timestamp("ms", tz="UTC")),
])
ROW_GROUP_ROWS = 1 << 18


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order; columns it lacks (an older store's) are null."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.table(cols, schema=schema)


def sweep_uri(root: str, name: str) -> str:
    """Absolute URI of a sweep directory; a relative local root is taken from the cwd."""
    base = root if "://" in root else os.path.abspath(os.path.expanduser(root))
    return f"{base.rstrip('/')}/{name}"


class Store:
    """One sweep directory on a pyarrow filesystem (local path or URI)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = pafs.FileSystem.from_uri(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    @classmethod
    def for_sweep(cls, root: str, name: str) -> "Store":
        return cls(sweep_uri(root, name))

    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._p(rel)).type != pafs.FileType.NotFound

    def list(self, rel: str) -> list[str]:
        """Base names of the files in a sub-directory (none if it does not exist)."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self._p(rel)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    # ------------------------------------------------------------------ atomic writes
    def _tmp(self, rel: str) -> str:
        head, _, base = rel.rpartition("/")
        return self._p(f"{head + '/' if head else ''}.{base}.{uuid.uuid4().hex[:8]}.tmp")

    def write_bytes(self, rel: str, data: bytes) -> None:
        tmp = self._tmp(rel)
        self.fs.create_dir(self._p(rel).rpartition("/")[0], recursive=True)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self._p(rel))

    def read_bytes(self, rel: str) -> bytes | None:
        if not self.exists(rel):
            return None
        with self.fs.open_input_stream(self._p(rel)) as f:
            return f.read()

    def write_table(self, rel: str, table: pa.Table) -> None:
        with self.part_writer(rel, table.schema) as w:
            w.write(table)

    def part_writer(self, rel: str, schema: pa.Schema) -> "PartWriter":
        self.fs.create_dir(self._p(rel).rpartition("/")[0], recursive=True)
        return PartWriter(self, rel, schema)

    def read_json(self, rel: str) -> dict | None:
        data = self.read_bytes(rel)
        return None if data is None else json.loads(data)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ driver side
    def done_keys(self) -> set[str]:
        return {n[: -len(".parquet")] for n in self.list("done") if _visible(n)}

    def read_done(self) -> pa.Table:
        """All commit markers (one row per finished point)."""
        tables = []
        for name in self.list("done"):
            if _visible(name):
                with self.fs.open_input_file(self._p(f"done/{name}")) as f:
                    tables.append(conform(pq.read_table(f), DONE_SCHEMA))
        return pa.concat_tables(tables) if tables else DONE_SCHEMA.empty_table()

    def clean_orphans(self) -> int:
        """Delete temporaries and part files whose trial has no done marker; return how many."""
        done = self.done_keys()
        removed = 0
        for rel in ("",) + PART_DIRS + ("done",):
            for name in self.list(rel):
                orphan = name.endswith(".tmp") or (
                    rel in PART_DIRS and name.startswith("part-")
                    and name[len("part-"): -len(".parquet")] not in done)
                if orphan:
                    self.fs.delete_file(self._p(f"{rel}/{name}" if rel else name))
                    removed += 1
        return removed

    def lock(self) -> "Lock":
        return Lock(self)


class PartWriter:
    """Streams row groups into a hidden temporary file; `commit` moves it into place."""

    def __init__(self, store: Store, rel: str, schema: pa.Schema):
        self.store, self.rel, self.schema = store, rel, schema
        self.tmp = store._tmp(rel)
        self.writer = pq.ParquetWriter(self.tmp, schema, filesystem=store.fs, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table.cast(self.schema), row_group_size=ROW_GROUP_ROWS)

    def commit(self) -> None:
        self.writer.close()
        self.store.fs.move(self.tmp, self.store._p(self.rel))

    def abort(self) -> None:
        self.writer.close()
        self.store.fs.delete_file(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.commit()


def _visible(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


# ---------------------------------------------------------------------- the driver's lock

class Lock:
    """``.lock`` naming the driver (host, pid, start time). One driver per sweep at a time.

    A lock whose process is gone on this host is stale and taken over; one held by a live
    process, or by another host, refuses the new driver with a message saying which.
    """

    def __init__(self, store: Store):
        self.store = store
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "created": _proc_start(os.getpid()),
                   "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def holder(self) -> dict | None:
        """The live holder of the lock, or None when it is free or stale."""
        try:
            info = self.store.read_json(".lock")
        except (ValueError, OSError):
            return None
        if not info:
            return None
        if info.get("host") == self.me["host"] and not _alive(info.get("pid"), info.get("created")):
            return None
        return info

    def check(self) -> None:
        """Raise UsageError when another live driver holds the lock (no side effects)."""
        info = self.holder()
        if info and not (info.get("host") == self.me["host"] and info.get("pid") == self.me["pid"]):
            raise UsageError(
                f"sweep.name: sweep {self.store.uri} is already being run by pid {info.get('pid')} on "
                f"{info.get('host')} since {info.get('since')}; wait for it to finish or stop it "
                f"(if that driver is gone, delete {self.store.uri}/.lock)")

    def acquire(self) -> None:
        self.check()
        data = json.dumps(self.me).encode()
        if self.store.local:
            os.makedirs(self.store.path, exist_ok=True)
            lock_path = self.store._p(".lock")
            if os.path.exists(lock_path):  # stale (check() passed): take it over
                os.remove(lock_path)
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check()
                raise UsageError(f"sweep.name: another driver took the lock of {self.store.uri} just now") from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            self.store.write_bytes(".lock", data)

    def release(self) -> None:
        try:
            info = self.store.read_json(".lock")
            if info and info.get("pid") == self.me["pid"] and info.get("host") == self.me["host"]:
                self.store.fs.delete_file(self.store._p(".lock"))
        except (OSError, ValueError):
            pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *_):
        self.release()


def _proc_start(pid: int) -> float | None:
    """Start time of a process (clock ticks since boot, Linux); tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return float(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid, created) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = _proc_start(pid)
    return created is None or start is None or start == created


# ---------------------------------------------------------------------- worker side

def weights_history_bytes(spec) -> int:
    """Bytes of one point's weights at every checkpoint (W, b, and W2 for ``abs``, float32)."""
    from toymodels import checkpoint_steps

    m, n = spec.model.n_hidden, spec.model.n_features
    per_checkpoint = 4 * (m * n * (2 if spec.model.kind == "abs" else 1) + n)
    return per_checkpoint * len(checkpoint_steps(spec.train))


class TrialWriter:
    """Buffers one trial's checkpoints (numpy) and commits its rows to the store at the end.

    Weights stream into their part file as checkpoints arrive: every checkpoint's when
    ``weights_history`` is on, else only the final one's.
    """

    def __init__(self, store: Store, trial_key: str, point_ids: list[str], weights_history: bool = True):
        self.store, self.trial_key = store, trial_key
        self.ids = pa.array(point_ids, pa.string())
        self.weights_history = weights_history
        self.steps: list[int] = []
        self.metrics: dict[str, list[np.ndarray]] = {
            k: [] for k in ("loss", "train_loss", "frob", "d_star", "lr", "reconstruction", "penalty")}
        self.features: dict[str, list[np.ndarray]] = {k: [] for k in ("norm", "interference", "dimensionality", "bias")}
        self.weights: PartWriter | None = None

    def add(self, ck) -> None:
        """Keep one checkpoint (a toymodels Checkpoint: arrays with a leading points axis)."""
        self.steps.append(int(ck.step))
        for k, buf in self.metrics.items():
            buf.append(np.asarray(getattr(ck, k), dtype=np.float32).copy())
        for k, buf in self.features.items():
            buf.append(np.asarray(getattr(ck, k), dtype=np.float32).copy())
        if self.weights_history or ck.final:
            if self.weights is None:
                self.weights = self.store.part_writer(f"weights/part-{self.trial_key}.parquet", WEIGHTS_SCHEMA)
            self.weights.write(self.weights_table(ck))

    def abort(self) -> None:
        """Drop the partly written weights file of a failed attempt."""
        if self.weights is not None:
            self.weights.abort()
            self.weights = None

    def _ids(self, index: np.ndarray) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), self.ids).cast(pa.string())

    def metrics_table(self) -> pa.Table:
        n_pts, n_ck = len(self.ids), len(self.steps)
        cols = {"point_id": self._ids(np.repeat(np.arange(n_pts), n_ck)),
                "step": np.tile(np.asarray(self.steps, np.int64), n_pts)}
        for k, buf in self.metrics.items():
            cols[k] = np.stack(buf, axis=1).ravel()  # [points, checkpoints], point-major
        return pa.table(cols, schema=METRICS_SCHEMA)

    def write_features(self, importance: np.ndarray, density: np.ndarray) -> None:
        n_pts, n_ck = len(self.ids), len(self.steps)
        n = importance.shape[1]
        stacked = {k: np.stack(buf, axis=1) for k, buf in self.features.items()}  # [points, ck, n]
        per = max(1, ROW_GROUP_ROWS // max(1, n_ck * n))
        with self.store.part_writer(f"features/part-{self.trial_key}.parquet", FEATURES_SCHEMA) as w:
            for lo in range(0, n_pts, per):
                hi = min(n_pts, lo + per)
                rows = (hi - lo) * n_ck * n
                cols = {"point_id": self._ids(np.repeat(np.arange(lo, hi), n_ck * n)),
                        "step": np.tile(np.repeat(np.asarray(self.steps, np.int64), n), hi - lo),
                        "feature": np.tile(np.arange(n, dtype=np.int32), rows // n)}
                for k, arr in stacked.items():
                    cols[k] = arr[lo:hi].ravel()
                cols["importance"] = np.repeat(importance[lo:hi, None, :], n_ck, axis=1).ravel().astype(np.float32)
                cols["density"] = np.repeat(density[lo:hi, None, :], n_ck, axis=1).ravel().astype(np.float32)
                w.write(pa.table(cols, schema=FEATURES_SCHEMA))

    def weights_table(self, ck) -> pa.Table:
        """One row per point: its W, b (and W2) at the checkpoint ``ck``."""
        W = np.asarray(ck.W, np.float32)
        n_pts, m, n = W.shape
        flat = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a[0].size).cast(pa.list_(pa.float32()))
        W2 = (flat(np.asarray(ck.W2, np.float32)) if ck.W2 is not None
              else pa.nulls(n_pts, pa.list_(pa.float32())))
        return pa.table({"point_id": self.ids, "n_hidden": pa.array(np.full(n_pts, m, np.int32)),
                         "n_features": pa.array(np.full(n_pts, n, np.int32)),
                         "W": flat(W), "b": flat(np.asarray(ck.b, np.float32)), "W2": W2,
                         "step": pa.array(np.full(n_pts, int(ck.step), np.int64))},
                        schema=WEIGHTS_SCHEMA)

    def commit_metrics(self) -> None:
        self.store.write_table(f"metrics/part-{self.trial_key}.parquet", self.metrics_table())

    def commit_rest(self, result, info: dict) -> pa.Table:
        """Features, weights, then the done marker (the commit). Returns the done rows."""
        self.write_features(np.asarray(result.importance), np.asarray(result.density))
        self.weights.commit()
        self.weights = None
        done = self.done_table(result, info)
        self.store.write_table(f"done/{self.trial_key}.parquet", done)
        return done

    def done_table(self, result, info: dict) -> pa.Table:
        n_pts = len(self.ids)
        div = np.asarray(result.diverged_step, np.int64)
        last_loss = self.metrics["loss"][-1].astype(np.float64)
        last_d = self.metrics["d_star"][-1].astype(np.float64)
        now = datetime.now(timezone.utc)
        const = lambda v, t: pa.array([v] * n_pts, t)
        return pa.table({
            "point_id": self.ids, "trial_key": const(self.trial_key, pa.string()),
            "status": pa.array(np.where(div >= 0, "diverged", "done").tolist(), pa.string()),
            "final_loss": last_loss, "final_d_star": last_d,
            "diverged_step": pa.array(div, mask=div < 0),
            "selection_loss": np.asarray(result.selection_loss, np.float64),
            "selection_reconstruction": np.asarray(result.selection_reconstruction, np.float64),
            "selection_se": np.asarray(result.selection_se, np.float64),
            "node_id": const(info.get("node_id"), pa.string()), "node_ip": const(info.get("node_ip"), pa.string()),
            "device": const(info.get("device"), pa.string()), "gpu_ids": const(info.get("gpu_ids"), pa.string()),
            "gpu_fraction": const(info.get("gpu_fraction"), pa.float64()),
            "attempt": const(info.get("attempt"), pa.int64()),
            "started_at": const(info.get("started_at"), pa.timestamp("ms", tz="UTC")),
            "finished_at": const(now, pa.timestamp("ms", tz="UTC")),
        }, schema=DONE_SCHEMA)


# ---------------------------------------------------------------------- points.parquet

POINT_FIXED = [("point_id", pa.string()), ("trial_key", pa.string()), ("status", pa.string()),
               ("seed", pa.int64()), ("seed_index", pa.int64()), ("cell_id", pa.string()),
               ("final_loss", pa.float64()), ("final_d_star", pa.float64()), ("diverged_step", pa.int64()),
               ("selection_loss", pa.float64()), ("selection_reconstruction", pa.float64()),
               ("selection_se", pa.float64())]
POINT_EXTRA = ["node_id", "node_ip", "device", "gpu_ids", "gpu_fraction", "attempt", "started_at", "finished_at"]
ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(),
               "json": pa.string()}


def points_table(plan, outcomes: pa.Table, failed: dict[str, str]) -> pa.Table:
    """One row per point: the plan (settings by dotted key) joined with its outcome.

    `outcomes` are done-marker rows; `failed` maps point_id -> trial_key of trials that
    exhausted their retries in this run.
    """
    from sweeps.plan import dotted_columns

    by_id = {pid: i for i, pid in enumerate(outcomes.column("point_id").to_pylist())}
    out_cols = {name: outcomes.column(name).to_pylist() for name in outcomes.column_names}
    rows_idx = [by_id.get(p.point_id) for p in plan.points]

    def outcome(name, default=None):
        col = out_cols[name]
        return [col[i] if i is not None else default for i in rows_idx]

    ids = [p.point_id for p in plan.points]
    status = [("failed" if pid in failed else "pending") if i is None else s
              for pid, i, s in zip(ids, rows_idx, outcome("status"))]
    trial = [failed.get(pid) if i is None else t for pid, i, t in zip(ids, rows_idx, outcome("trial_key"))]
    cols = {
        "point_id": ids, "trial_key": trial, "status": status,
        "seed": [p.seed for p in plan.points], "seed_index": [p.seed_index for p in plan.points],
        "cell_id": [p.cell_id for p in plan.points],
        "final_loss": outcome("final_loss"), "final_d_star": outcome("final_d_star"),
        "diverged_step": outcome("diverged_step"),
        **{k: outcome(k) if k in out_cols else [None] * len(ids)
           for k in ("selection_loss", "selection_reconstruction", "selection_se")},
    }
    fields = list(POINT_FIXED)
    swept = {k: j for j, k in enumerate(plan.swept)}
    for key, kind in dotted_columns().items():
        group, name = key.split(".", 1)
        if key in swept:
            values = [plan.cells[p.cell][swept[key]] for p in plan.points]
        else:
            values = [plan.config[group][name]] * len(plan.points)
        if kind == "json":
            values = [None if v is None else json.dumps(v) for v in values]
        cols[key] = values
        fields.append((key, ARROW_TYPES[kind]))
    for name in POINT_EXTRA:
        cols[name] = outcome(name)
        fields.append((name, DONE_SCHEMA.field(name).type))
    schema = pa.schema(fields, metadata={"schema_version": str(SCHEMA_VERSION)})
    return pa.table(cols, schema=schema)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
