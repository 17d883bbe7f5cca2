"""One sweep's directory, ``<store>/<sweep.name>/``, on a pyarrow filesystem (the contract: docs/store.md).

Every file is written under a hidden temporary name and moved into place, so a reader never
sees half a file. A trial's worker writes its four files into ``_staging/<attempt>/``, where no
reader looks (pyarrow, duckdb and polars skip names starting with ``_``, and the readers'
globs never reach it). Only the driver — the one process holding the sweep's lock — commits:
it moves the trial's metrics, features and weights into place, then its ``done/`` marker.
:meth:`SweepStore.clean` removes what no commit will ever claim (staging, temporaries, parts
without a marker); the driver runs it at every start and exit. :func:`preflight` checks a
store before anything is created or started.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeps.errors import UsageError, one_line
from sweeps.tables import DONE_SCHEMA, PART_DIRS, ROW_GROUP_ROWS, conform

STAGING = "_staging"
STAGED_FILES = ("metrics", "features", "weights", "done")


def sweep_uri(root: str, name: str) -> str:
    """Absolute URI of a sweep directory; a relative local root is taken from the cwd.

    A URI keeps its query (pyarrow's options, e.g. ``?endpoint_override=host:9000&scheme=http``).
    """
    if "://" in root:
        return child_uri(root, name)
    return f"{os.path.abspath(os.path.expanduser(root)).rstrip('/')}/{name}"


def child_uri(uri: str, rel: str) -> str:
    """``uri``/``rel``, with any query string of ``uri`` kept at the end."""
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{rel}{sep}{query}"


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a local path or URI; a bad one is a UsageError.

    Credentials are refused in a URI (it is recorded in config.yaml and shown in messages):
    object stores take them from the environment (AWS_ACCESS_KEY_ID, …) or their config files.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, _, rest = uri.partition("://")
    if "@" in rest.partition("/")[0]:
        raise UsageError(f"store: credentials do not belong in the {scheme}:// URI (it is recorded and shown); give "
                         "them in the environment (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the store's "
                         "config files")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if "Unrecognized filesystem type" in str(exc):
            raise UsageError(f"store: unknown filesystem scheme {scheme!r} in {uri!r}; use a local path or "
                             "file://, s3://, gs://, hdfs://") from None
        raise UsageError(f"store: cannot open {uri!r}: {one_line(exc)}") from None
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"store: cannot open {uri!r}: {one_line(exc)}") from None


class SweepStore:
    """The files of one sweep directory (local path or URI)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = open_filesystem(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    @classmethod
    def for_sweep(cls, root: str, name: str) -> "SweepStore":
        return cls(sweep_uri(root, name))

    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._p(rel)).type != pafs.FileType.NotFound

    def list(self, rel: str, dirs: bool = False) -> list[str]:
        """Base names of the files (or, with ``dirs``, folders) in a sub-directory; none if absent."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._p(rel), allow_not_found=True))
        kind = pafs.FileType.Directory if dirs else pafs.FileType.File
        return sorted(i.base_name for i in infos if i.type == kind)

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
        try:
            with self.fs.open_input_stream(self._p(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_table(self, rel: str, table: pa.Table) -> None:
        with self.part_writer(rel, table.schema) as w:
            w.write(table)

    def part_writer(self, rel: str, schema: pa.Schema) -> "PartWriter":
        self.fs.create_dir(self._p(rel).rpartition("/")[0], recursive=True)
        return PartWriter(self, rel, schema)

    def read_table(self, rel: str) -> pa.Table | None:
        data = self.read_bytes(rel)
        return None if data is None else read_parquet(pa.BufferReader(data))

    def read_json(self, rel: str) -> dict | None:
        data = self.read_bytes(rel)
        return None if data is None else json.loads(data)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ staging and commits
    def staging(self, generation: int, trial_key: str) -> str:
        """A fresh staging folder name for one attempt of a trial (under ``_staging/``)."""
        return f"{STAGING}/g{generation}-{trial_key}-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def staged_generation(staged: str) -> int | None:
        name = staged.rpartition("/")[2]
        head = name.split("-", 1)[0]
        return int(head[1:]) if head.startswith("g") and head[1:].isdigit() else None

    def commit(self, staged: str, trial_key: str) -> pa.Table:
        """Publish a staged trial: its parts, then its done marker. Returns the done rows.

        Raises FileNotFoundError when the staging folder lacks a file (nothing is published).
        """
        for kind in STAGED_FILES:
            if not self.exists(f"{staged}/{kind}.parquet"):
                raise FileNotFoundError(f"{staged}/{kind}.parquet")
        done = self.read_table(f"{staged}/done.parquet")
        for kind in PART_DIRS:
            self.fs.create_dir(self._p(kind), recursive=True)
            self.fs.move(self._p(f"{staged}/{kind}.parquet"), self._p(f"{kind}/part-{trial_key}.parquet"))
        self.fs.create_dir(self._p("done"), recursive=True)
        self.fs.move(self._p(f"{staged}/done.parquet"), self._p(f"done/{trial_key}.parquet"))
        self.fs.delete_dir(self._p(staged))
        return conform(done, DONE_SCHEMA)

    def done_keys(self) -> set[str]:
        return {n[: -len(".parquet")] for n in self.list("done") if _visible(n)}

    def read_done(self) -> pa.Table:
        """All commit markers (one row per finished point), as DONE_SCHEMA (older files padded)."""
        tables = []
        for name in self.list("done"):
            if _visible(name):
                with self.fs.open_input_file(self._p(f"done/{name}")) as f:
                    tables.append(conform(read_parquet(f), DONE_SCHEMA))
        return pa.concat_tables(tables) if tables else DONE_SCHEMA.empty_table()

    def clean(self) -> int:
        """Remove staging, temporaries and parts without a done marker; return how many entries."""
        removed = len(self.list(STAGING, dirs=True) + self.list(STAGING))
        if self.exists(STAGING):
            try:
                self.fs.delete_dir(self._p(STAGING))
            except FileNotFoundError:
                pass
        done = self.done_keys()
        for rel in ("",) + PART_DIRS + ("done",):
            for name in self.list(rel):
                orphan = name.endswith(".tmp") or (
                    rel in PART_DIRS and name.startswith("part-")
                    and name[len("part-"): -len(".parquet")] not in done)
                if orphan:
                    self.fs.delete_file(self._p(f"{rel}/{name}" if rel else name))
                    removed += 1
        return removed


    def drop_saved_states(self) -> int:
        """Delete the Ray Tune checkpoints (saved training states) of committed trials, under
        ``ray/<run>/<trial_key>/checkpoint_*``: nothing resumes from them. Returns how many."""
        done, dropped = self.done_keys(), 0
        for run in self.list("ray", dirs=True):
            for key in set(self.list(f"ray/{run}", dirs=True)) & done:
                for name in self.list(f"ray/{run}/{key}", dirs=True):
                    if name.startswith("checkpoint_"):
                        self.fs.delete_dir(self._p(f"ray/{run}/{key}/{name}"))
                        dropped += 1
        return dropped


class PartWriter:
    """Streams row groups into a hidden temporary file; `commit` moves it into place."""

    def __init__(self, store: SweepStore, rel: str, schema: pa.Schema):
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


def read_parquet(source) -> pa.Table:
    """One small Parquet file (a path, buffer or open file) as a table, decoded on this thread.

    Not ``pq.read_table``: on a buffer that goes through the dataset scanner, whose native
    threads can outlive the interpreter and abort the process at exit ("terminate called without
    an active exception", exit 134) after its work is done — about one `tms status` in five.
    """
    return pq.ParquetFile(source).read(use_threads=False)


def _visible(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


# ---------------------------------------------------------------------- before anything starts

def preflight(root: str, name: str, need_bytes: int) -> SweepStore:
    """Check a sweep's store without creating anything; bad ones are UsageErrors (one line).

    The scheme must be known; locally the sweep folder must exist as a folder or be creatable
    in a writable folder with ``need_bytes`` free; on an object store the path must be
    reachable and writable (a probe object is written and deleted). An existing ``sweep.json``
    must be readable.
    """
    _, path = open_filesystem(root)  # a bad scheme or URI is named as the user wrote it
    if not path.strip("/"):
        raise UsageError(f"store: {root!r} names no bucket or folder")
    store = SweepStore.for_sweep(root, name)
    if store.local:
        _check_local(store.path, need_bytes)
    else:
        _check_remote(store)
    try:
        meta = store.read_json("sweep.json")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"expected an object, got {type(meta).__name__}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"store: {store.uri}/sweep.json is not readable JSON ({one_line(exc)}); "
                         "move it away or delete that sweep directory") from None
    except OSError as exc:
        raise UsageError(f"store: cannot read {store.uri}/sweep.json: {one_line(exc)}") from None
    return store


def _check_local(path: str, need_bytes: int) -> None:
    probe = path
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        held = "" if probe == path else f" (it would have to hold {path})"
        raise UsageError(f"store: {probe} is not a directory{held}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tms-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"store: cannot write in {probe}: {exc.strerror or one_line(exc)}") from None
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UsageError(f"store: {probe} has {size_text(free)} free but the sweep will write about "
                         f"{size_text(need_bytes)}; free some space or use another store=")


def _check_remote(store: SweepStore) -> None:
    try:
        info = store.fs.get_file_info(store.path)
        if info.type == pafs.FileType.File:
            raise UsageError(f"store: {store.uri} is a file, not a folder")
        probe = store._p(f".tms-probe-{uuid.uuid4().hex[:8]}")
        with store.fs.open_output_stream(probe) as f:
            f.write(b"")
        store.fs.delete_file(probe)
    except UsageError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"store: cannot write to {store.uri}: {one_line(exc)}") from None


def size_text(n: float) -> str:
    """A byte count for people: 512 B, 1.5 KB … 3.2 PB (powers of 1024)."""
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    for unit in units:
        if n < 1024 or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
