"""Reading a sweep's store (docs/store.md) with pyarrow: finished trials only, projected, streamed.

A trial is finished when its marker ``done/<trial_key>.parquet`` exists; its part files under
``metrics/``, ``features/`` and ``weights/`` are then complete. Files whose name starts with
``_`` or ``.`` are skipped. A sweep that is still running is therefore read as far as it has
got, and no part file of an unfinished trial is ever opened.

Feature rows are never loaded whole: :meth:`Store.iter_series` yields groups of points whose
metric and feature series are complete, at most ``max_rows`` feature rows at a time;
:meth:`Store.iter_weights` streams final weights in record batches and
:meth:`Store.iter_weight_history` the weights at every checkpoint (schema 2), a bounded group of
points at a time. Schema-1 stores (no ``step`` in ``weights/``: final weights only, no
``selection_loss``) read the same way.
"""

from __future__ import annotations

import ctypes
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from .errors import AnalysisError

SCHEMA_VERSIONS = (1, 2)
"""Store schema versions this reader understands: 2 adds ``selection_loss`` to points, the
loss's ``reconstruction`` and ``penalty`` to metrics and a ``step`` column to weights."""
POINT_REQUIRED = ("point_id", "cell_id", "seed")
POINT_OPTIONAL = ("trial_key", "status", "seed_index", "final_loss", "final_d_star",
                  "selection_loss", "selection_reconstruction",
                  "model.kind", "model.n_features", "model.n_hidden", "data.density",
                  "data.extra_importance", "data.importance_decay", "train.steps")
DONE_REQUIRED = ("point_id", "status")
METRIC_COLUMNS = ("point_id", "step", "loss", "d_star")
FEATURE_COLUMNS = ("point_id", "step", "feature", "norm", "interference", "dimensionality",
                   "importance", "density")
WEIGHT_COLUMNS = ("point_id", "n_hidden", "n_features", "W", "b")

_ARROW_ERRORS = (OSError, pa.ArrowException, ValueError)
# point_id read as dictionary<int32, string>: 4 bytes a row instead of a string
_FORMAT = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns={"point_id"}))


@dataclass(frozen=True)
class PointSeries:
    """One finished point's time series, read from ``metrics/`` and ``features/``.

    ``steps`` [T] and ``loss``, ``d_star`` [T] come from metrics; ``feature_steps`` [T'] and the
    per-feature arrays ``norm``, ``interference``, ``dimensionality`` [T', n] from features
    (T' = T for the trainer's stores; missing cells are NaN); ``importance`` and ``density`` [n]
    are the features' values at the last checkpoint.
    """

    point_id: str
    steps: np.ndarray
    loss: np.ndarray
    d_star: np.ndarray
    feature_steps: np.ndarray
    norm: np.ndarray
    interference: np.ndarray
    dimensionality: np.ndarray
    importance: np.ndarray
    density: np.ndarray


@dataclass(frozen=True)
class PointWeights:
    """One point's final weights: ``W`` [n_hidden, n_features] (W1 for abs), ``b`` [n_features],
    ``W2`` [n_features, n_hidden] for abs, else None."""

    point_id: str
    W: np.ndarray
    b: np.ndarray
    W2: Optional[np.ndarray]


@dataclass(frozen=True)
class WeightHistory:
    """One point's W at every stored checkpoint: ``steps`` [T] ascending, ``W`` [T, n_hidden, n_features]."""

    point_id: str
    steps: np.ndarray
    W: np.ndarray


def _open(sweep_dir: str) -> tuple[pafs.FileSystem, str]:
    if "://" in sweep_dir:
        try:
            return pafs.FileSystem.from_uri(sweep_dir)
        except _ARROW_ERRORS as exc:
            raise AnalysisError(f"{sweep_dir}: cannot open the store ({_reason(exc)})") from None
    return pafs.LocalFileSystem(), os.path.abspath(sweep_dir)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _visible(name: str) -> bool:
    return not name.startswith(("_", "."))


class Store:
    """A sweep directory ``<store>/<sweep.name>/`` opened for reading.

    Attributes: ``name`` (sweep name), ``swept`` (dotted keys that vary over the grid),
    ``points`` (DataFrame, one row per finished point, with ``trial_key`` and ``status`` from
    its done marker joined to its settings), ``counts`` (points per status, all of the plan).
    """

    def __init__(self, sweep_dir: str, extra_point_columns: tuple[str, ...] = ()):
        self.location = sweep_dir
        self.fs, self.root = _open(sweep_dir)
        info = self.fs.get_file_info(self.root)
        if info.type != pafs.FileType.Directory:
            raise AnalysisError(f"{sweep_dir}: no such sweep directory")
        self.sweep = self._read_sweep_json()
        self.name = str(self.sweep.get("name") or posixpath.basename(self.root.rstrip("/")))
        plan = self._read_points(extra_point_columns)
        self.swept = self._swept_keys(plan)
        done = self._read_done()
        self.counts = self._status_counts(plan, done)
        unknown = set(done.point_id) - set(plan.point_id)
        if unknown:
            raise AnalysisError(f"{self._path('points.parquet')}: {len(unknown)} finished point(s) "
                                f"missing, e.g. {sorted(unknown)[0]}")
        finished = done[done.status == "done"]
        self.points = (plan.drop(columns=[c for c in ("trial_key", "status") if c in plan])
                       .merge(finished, on="point_id", how="inner")
                       .sort_values("point_id", kind="stable").reset_index(drop=True))
        if self.points.empty:
            raise AnalysisError(f"{sweep_dir}: the store has no finished points yet "
                                f"({len(plan)} planned, {len(done)} with a done marker)")
        self._trials = self.points.groupby("trial_key", sort=True)["point_id"].apply(list).to_dict()
        self._mixed = {k for k, ids in done.groupby("trial_key")["status"]
                       if (ids != "done").any()}

    # -- metadata ------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _read_sweep_json(self) -> dict:
        path = self._path("sweep.json")
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return {}
        try:
            with self.fs.open_input_stream(path) as f:
                meta = json.loads(f.read().decode("utf-8"))
        except (_ARROW_ERRORS + (json.JSONDecodeError, UnicodeDecodeError)) as exc:
            raise AnalysisError(f"{path}: not readable JSON ({_reason(exc)})") from None
        if not isinstance(meta, dict):
            raise AnalysisError(f"{path}: expected a JSON object")
        version = meta.get("schema_version", SCHEMA_VERSIONS[0])
        if version not in SCHEMA_VERSIONS:
            raise AnalysisError(f"{path}: schema_version {version!r} is not supported "
                                f"(this analysis reads versions {', '.join(map(str, SCHEMA_VERSIONS))})")
        return meta

    def _dataset(self, paths, what: str, dictionary_ids: bool = False) -> ds.Dataset:
        try:
            return ds.dataset(paths, format=_FORMAT if dictionary_ids else "parquet", filesystem=self.fs)
        except _ARROW_ERRORS as exc:
            raise AnalysisError(f"{what}: not a readable Parquet file ({_reason(exc)})") from None

    def _read_points(self, extra: tuple[str, ...]) -> pd.DataFrame:
        path = self._path("points.parquet")
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            raise AnalysisError(f"{path}: missing (is {self.location} a sweep directory?)")
        data = self._dataset(path, path)
        names = data.schema.names
        for col in POINT_REQUIRED:
            if col not in names:
                raise AnalysisError(f"{path}: missing column '{col}'")
        swept = [k for k in self.sweep.get("swept", []) if isinstance(k, str)]
        for key in swept:
            if key not in names:
                raise AnalysisError(f"{path}: missing column '{key}' (swept in sweep.json)")
        wanted = list(dict.fromkeys([*POINT_REQUIRED, *POINT_OPTIONAL, *swept, *extra]))
        if not swept:  # no sweep.json: any setting column may be swept
            wanted += [c for c in names if "." in c and c not in wanted]
        try:
            table = data.to_table(columns=[c for c in wanted if c in names])
        except _ARROW_ERRORS as exc:
            raise AnalysisError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None
        return table.to_pandas()

    def _swept_keys(self, plan: pd.DataFrame) -> list[str]:
        if "swept" in self.sweep:
            return [str(k) for k in self.sweep["swept"]]
        return [c for c in plan.columns if "." in c and plan[c].nunique(dropna=False) > 1]

    def _read_done(self) -> pd.DataFrame:
        done_dir = self._path("done")
        infos = self.fs.get_file_info(pafs.FileSelector(done_dir, allow_not_found=True))
        paths = sorted(i.path for i in infos
                       if i.type == pafs.FileType.File and _visible(posixpath.basename(i.path))
                       and i.path.endswith(".parquet"))
        frames = []
        for path in paths:
            frag = self._dataset(path, path)
            names = frag.schema.names
            for col in DONE_REQUIRED:
                if col not in names:
                    raise AnalysisError(f"{path}: missing column '{col}'")
            try:
                df = frag.to_table(columns=list(DONE_REQUIRED)).to_pandas()
            except _ARROW_ERRORS as exc:
                raise AnalysisError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None
            df["trial_key"] = posixpath.basename(path)[: -len(".parquet")]
            frames.append(df)
        if not frames:
            return pd.DataFrame({"point_id": pd.Series([], dtype=str), "status": pd.Series([], dtype=str),
                                 "trial_key": pd.Series([], dtype=str)})
        return pd.concat(frames, ignore_index=True).drop_duplicates("point_id", keep="last")

    @staticmethod
    def _status_counts(plan: pd.DataFrame, done: pd.DataFrame) -> dict[str, int]:
        status = pd.Series("pending", index=plan.point_id.values, dtype=object)
        status.loc[done.point_id.values] = done.status.values
        return {str(k): int(v) for k, v in status.value_counts().sort_index().items()}

    # -- part files ----------------------------------------------------------------------

    def part_path(self, kind: str, trial_key: str) -> str:
        """Path of ``<kind>/part-<trial_key>.parquet``."""
        return self._path(kind, f"part-{trial_key}.parquet")

    def _fragment(self, kind: str, trial_key: str, columns: tuple[str, ...],
                  required: bool = True) -> Optional[ds.Dataset]:
        path = self.part_path(kind, trial_key)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            if not required:
                return None
            raise AnalysisError(f"{path}: missing, although done/{trial_key}.parquet marks the trial finished")
        data = self._dataset(path, path, dictionary_ids=kind != "weights")
        for col in columns:
            if col not in data.schema.names:
                raise AnalysisError(f"{path}: missing column '{col}'")
        return data

    def _read(self, data: ds.Dataset, columns: list[str], ids: Optional[list[str]]) -> pa.Table:
        flt = pc.field("point_id").isin(pa.array(ids, pa.string())) if ids is not None else None
        try:
            return data.to_table(columns=columns, filter=flt)
        except _ARROW_ERRORS as exc:
            files = getattr(data, "files", None) or ["?"]
            raise AnalysisError(f"{files[0] if len(files) == 1 else ', '.join(files[:3])}: "
                                f"not a readable Parquet file ({_reason(exc)})") from None

    def _plan_groups(self, max_rows: int, only: Optional[set[str]]
                     ) -> list[list[tuple[str, Optional[list[str]]]]]:
        """Groups of (trial_key, point ids or None for all) whose feature rows fit ``max_rows``."""
        groups, current, size = [], [], 0
        for key, ids in self._trials.items():
            subset = ids if key in self._mixed else None
            if only is not None:
                subset = [i for i in ids if i in only]
                if not subset:
                    continue
            data = self._fragment("features", key, FEATURE_COLUMNS)
            try:
                rows = data.count_rows()
            except _ARROW_ERRORS as exc:
                raise AnalysisError(f"{self.part_path('features', key)}: not a readable Parquet file "
                                    f"({_reason(exc)})") from None
            if subset is not None:
                rows = rows * len(subset) // max(len(ids), 1)
            if rows > max_rows:
                chosen = subset if subset is not None else ids
                per_point = max(1, rows // len(chosen))
                step = max(1, max_rows // per_point)
                for i in range(0, len(chosen), step):
                    groups.append([(key, chosen[i:i + step])])
                continue
            if current and size + rows > max_rows:
                groups.append(current)
                current, size = [], 0
            current.append((key, subset))
            size += rows
        if current:
            groups.append(current)
        return groups

    def iter_series(self, max_rows: int, point_ids: Optional[set[str]] = None) -> Iterator[PointSeries]:
        """Finished points' series (all, or those in ``point_ids``), about ``max_rows`` feature
        rows read at once; each yielded series is complete."""
        for group in self._plan_groups(max_rows, point_ids):
            metrics, features = [], []
            for key, ids in group:
                m = self._fragment("metrics", key, METRIC_COLUMNS)
                f = self._fragment("features", key, FEATURE_COLUMNS)
                metrics.append(self._read(m, list(METRIC_COLUMNS), ids))
                features.append(self._read(f, list(FEATURE_COLUMNS), ids))
            # hand each table over without keeping a reference, so its columns are freed
            # one by one as they are converted
            tables = [_concat(metrics), _concat(features)]
            del metrics, features
            m_arrays = _sorted_arrays(tables.pop(0), ("step",))
            f_arrays = _sorted_arrays(tables.pop(0), ("step", "feature"))
            yield from _split_points(m_arrays, f_arrays)
            del m_arrays, f_arrays
            release_memory()

    def _weight_parts(self, point_ids: Optional[set[str]]) -> Iterator[tuple[str, ds.Dataset, list[str]]]:
        """(path, dataset, point ids) of each finished trial's weights part; absent parts are
        listed in :attr:`missing_weights`."""
        self.missing_weights: list[str] = []
        for key, ids in self._trials.items():
            if point_ids is not None:
                ids = [i for i in ids if i in point_ids]
                if not ids:
                    continue
            data = self._fragment("weights", key, WEIGHT_COLUMNS, required=False)
            if data is None:
                self.missing_weights.append(self.part_path("weights", key))
                continue
            yield self.part_path("weights", key), data, ids

    def _final_steps(self, path: str, data: ds.Dataset, ids: list[str]) -> dict[int, list[str]]:
        """Point ids grouped by their last stored step (schema 2: weights/ has a ``step`` column)."""
        table = self._read(data, ["point_id", "step"], ids)
        last = table.group_by("point_id").aggregate([("step", "max")]).to_pandas()
        return {int(step): group["point_id"].astype(str).tolist()
                for step, group in last.groupby("step_max", sort=True)}

    def iter_weights(self, point_ids: Optional[set[str]] = None,
                     batch_rows: int = 512) -> Iterator[PointWeights]:
        """Final weights of finished points (all, or those in ``point_ids``), streamed.

        Trials whose ``weights/`` part is absent are skipped (listed in :attr:`missing_weights`).
        """
        for path, data, ids in self._weight_parts(point_ids):
            cols = list(WEIGHT_COLUMNS) + (["W2"] if "W2" in data.schema.names else [])
            if "step" in data.schema.names:
                selections = [(pc.field("point_id").isin(pa.array(group, pa.string()))
                               & (pc.field("step") == step))
                              for step, group in self._final_steps(path, data, ids).items()]
            else:
                selections = [pc.field("point_id").isin(pa.array(ids, pa.string()))]
            try:
                for flt in selections:
                    for batch in data.to_batches(columns=cols, filter=flt, batch_size=batch_rows):
                        yield from _unpack_weights(batch, path)
            except _ARROW_ERRORS as exc:
                raise AnalysisError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None

    def iter_weight_history(self, max_values: int, point_ids: Optional[set[str]] = None
                            ) -> Iterator[WeightHistory]:
        """W at every stored checkpoint of finished points whose ``weights/`` keep more than one
        step (schema 2), about ``max_values`` weight values read at once; points with the final
        step only (schema 1, or over the writer's size cap) are not yielded."""
        for path, data, ids in self._weight_parts(point_ids):
            if "step" not in data.schema.names:
                continue
            try:
                counts = (self._read(data, ["point_id", "step", "n_hidden", "n_features"], ids)
                          .group_by("point_id").aggregate([("step", "count"), ("n_hidden", "max"),
                                                          ("n_features", "max")]).to_pandas())
            except pa.ArrowException as exc:
                raise AnalysisError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None
            counts = counts[counts["step_count"] > 1]
            size = counts["step_count"] * counts["n_hidden_max"] * counts["n_features_max"]
            group, total = [], 0
            for pid, values in zip(counts["point_id"].astype(str), size):
                if group and total + values > max_values:
                    yield from self._history(path, data, group)
                    group, total = [], 0
                group.append(pid)
                total += int(values)
            if group:
                yield from self._history(path, data, group)

    def _history(self, path: str, data: ds.Dataset, ids: list[str]) -> Iterator[WeightHistory]:
        table = self._read(data, ["point_id", "step", "n_hidden", "n_features", "W"], ids)
        table = table.sort_by([("point_id", "ascending"), ("step", "ascending")])
        frames: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for batch in table.to_batches():
            for w in _unpack_weights(batch.select(["point_id", "n_hidden", "n_features", "W"]), path,
                                     steps=batch.column("step").to_numpy(zero_copy_only=False)):
                entry = frames.setdefault(w.point_id, ([], []))
                entry[0].append(w.step)
                entry[1].append(w.W)
        for pid, (steps, Ws) in frames.items():
            yield WeightHistory(pid, np.asarray(steps, dtype=np.int64), np.stack(Ws))


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed memory back to the OS between groups of points.

    Per-point work leaves the C heap fragmented by the small results kept between the large
    transient arrays; glibc's malloc_trim returns the free pages (no-op elsewhere).
    """
    pa.default_memory_pool().release_unused()
    if _TRIM is not None:
        _TRIM(0)


def _concat(tables: list[pa.Table]) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise AnalysisError(f"part files disagree on their columns' types ({_reason(exc)})") from None


def _sorted_arrays(table: pa.Table, keys: tuple[str, ...]) -> dict:
    """The table's columns as numpy arrays sorted by (point, *keys); point ids as int codes.

    Returns {"codes": int [R], "ids": list of point ids, column: array [R], …}; float columns
    stay float32 (NaN for nulls).
    """
    pid = table.column("point_id")
    if not pa.types.is_dictionary(pid.type):
        pid = pc.dictionary_encode(pid)
    table = table.drop_columns(["point_id"])
    combined = pa.Table.from_arrays([pid], names=["p"]).unify_dictionaries().column("p").combine_chunks()
    codes = combined.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    ids = combined.dictionary.to_pylist()
    del pid, combined
    def take(name: str, order=None) -> np.ndarray:
        nonlocal table
        arr = table.column(name).to_numpy()
        table = table.drop_columns([name])
        arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64, copy=False)
        return arr if order is None else arr[order]

    key_arrays = {k: take(k) for k in keys}
    order = np.lexsort(tuple(key_arrays[k] for k in reversed(keys)) + (codes,))
    out = {"codes": codes[order], "ids": ids}
    for k in keys:
        out[k] = key_arrays.pop(k)[order]
    for name in list(table.column_names):
        out[name] = take(name, order)
    return out


def _split_points(m: dict, f: dict) -> Iterator[PointSeries]:
    """Cut sorted metric and feature arrays into one :class:`PointSeries` per point."""
    m_where = {m["ids"][m["codes"][a]]: (a, b) for a, b in _bounds(m["codes"])}
    for a, b in _bounds(f["codes"]):
        pid = f["ids"][f["codes"][a]]
        if pid not in m_where:
            continue
        ma, mb = m_where[pid]
        steps, t_idx = np.unique(f["step"][a:b], return_inverse=True)
        feat = f["feature"][a:b]
        if feat.min() < 0:
            raise AnalysisError(f"features/: point {pid} has a negative value in column 'feature'")
        n = int(feat.max()) + 1
        grids = {}
        for k in ("norm", "interference", "dimensionality", "importance", "density"):
            grid = np.full((len(steps), n), np.nan, dtype=np.float32)
            grid[t_idx, feat] = f[k][a:b]
            grids[k] = grid
        yield PointSeries(pid, m["step"][ma:mb], m["loss"][ma:mb], m["d_star"][ma:mb], steps,
                          grids["norm"], grids["interference"], grids["dimensionality"],
                          grids["importance"][-1].copy(), grids["density"][-1].copy())


def _bounds(codes: np.ndarray) -> list[tuple[int, int]]:
    if len(codes) == 0:
        return []
    cuts = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(codes)]])
    return list(zip(starts.tolist(), ends.tolist()))


@dataclass(frozen=True)
class _Stepped:
    point_id: str
    step: int
    W: np.ndarray


def _unpack_weights(batch: pa.RecordBatch, path: str, steps: Optional[np.ndarray] = None) -> Iterator:
    """:class:`PointWeights` per row of ``batch``; with ``steps`` [rows], only W per (point, step)."""
    ids = batch.column("point_id").to_pylist()
    m = batch.column("n_hidden").to_numpy(zero_copy_only=False)
    n = batch.column("n_features").to_numpy(zero_copy_only=False)
    lists = {"W": batch.column("W")} if steps is not None else {"W": batch.column("W"), "b": batch.column("b")}
    if "W2" in batch.schema.names:
        lists["W2"] = batch.column("W2")
    flat = {}
    for key, arr in lists.items():
        if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
            raise AnalysisError(f"{path}: column '{key}' is {arr.type}, expected a list of floats")
        flat[key] = (arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False),
                     arr.is_null().to_numpy(zero_copy_only=False))
    for i, pid in enumerate(ids):
        shape = {"W": (int(m[i]), int(n[i])), "b": (int(n[i]),), "W2": (int(n[i]), int(m[i]))}
        out = {}
        for key, (offsets, values, nulls) in flat.items():
            if nulls[i]:
                if key == "W2":
                    out[key] = None
                    continue
                raise AnalysisError(f"{path}: column '{key}' is null for point {pid}")
            vec = np.asarray(values[offsets[i]:offsets[i + 1]], dtype=np.float64)
            if vec.size != int(np.prod(shape[key])):
                raise AnalysisError(f"{path}: column '{key}' of point {pid} has {vec.size} values, "
                                    f"expected {'×'.join(map(str, shape[key]))}")
            out[key] = vec.reshape(shape[key])
        if steps is not None:
            yield _Stepped(pid, int(steps[i]), out["W"])
        else:
            yield PointWeights(pid, out["W"], out["b"], out.get("W2"))
