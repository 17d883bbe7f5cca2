"""The store's tables: Arrow schemas of every file, and ``points.parquet`` from a plan and its outcomes.

docs/store.md is the contract these schemas implement.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sweeps.points import dotted_columns

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Store versions this code reads and resumes (version 1 stores lack the columns added in 2)."""
PART_DIRS = ("metrics", "features", "weights")
ROW_GROUP_ROWS = 1 << 18

METRICS_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("step", pa.int64()), ("loss", pa.float32()),
    ("train_loss", pa.float32()), ("frob", pa.float32()), ("d_star", pa.float32()), ("lr", pa.float32()),
    ("reconstruction", pa.float32()), ("penalty", pa.float32()), ("data_dimensionality", pa.float32()),
    ("data_dimensionality_max", pa.float32()),
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
    ("generation", pa.int64()), ("resumed_step", pa.int64()),
])
"""A trial's commit marker: one row per point. ``generation`` is the committing driver's;
``resumed_step`` the step of the saved training state the trial continued from (null: step 0)."""

POINT_FIXED = [("point_id", pa.string()), ("trial_key", pa.string()), ("status", pa.string()),
               ("seed", pa.int64()), ("seed_index", pa.int64()), ("cell_id", pa.string()),
               ("final_loss", pa.float64()), ("final_d_star", pa.float64()), ("diverged_step", pa.int64()),
               ("selection_loss", pa.float64()), ("selection_reconstruction", pa.float64()),
               ("selection_se", pa.float64())]
POINT_EXTRA = ["node_id", "node_ip", "device", "gpu_ids", "gpu_fraction", "attempt", "started_at", "finished_at",
               "resumed_step"]
ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(),
               "json": pa.string()}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones (older files) become nulls."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def points_table(plan, outcomes: pa.Table, failed: dict[str, str]) -> pa.Table:
    """One row per point of ``plan``: its settings by dotted key joined with its outcome.

    ``outcomes`` are done-marker rows (DONE_SCHEMA); ``failed`` maps point_id -> trial_key of
    trials that exhausted their retries in this run (status ``failed``); other points without
    an outcome are ``pending``.
    """
    import pandas as pd

    ids = plan.point_ids
    at = pd.Index(outcomes.column("point_id").to_numpy(zero_copy_only=False)).get_indexer(ids)
    found = at >= 0
    take = pa.array(np.where(found, at, 0), mask=~found)
    got = outcomes.take(take) if len(outcomes) else pa.table({f.name: pa.nulls(len(ids), f.type)
                                                               for f in DONE_SCHEMA})
    status = np.where(found, got.column("status").to_numpy(zero_copy_only=False), "pending").astype(object)
    trial = got.column("trial_key").to_numpy(zero_copy_only=False).astype(object)
    if failed:
        lost = ~found & (pd.Index(list(failed)).get_indexer(ids) >= 0)
        status[lost] = "failed"
        trial[lost] = [failed[p] for p in ids[lost]]
    settings = plan.columns()
    cols = {"point_id": ids, "trial_key": trial, "status": status, "seed": settings.pop("seed"),
            "seed_index": settings.pop("seed_index"), "cell_id": settings.pop("cell_id")}
    for name in ("final_loss", "final_d_star", "diverged_step", "selection_loss", "selection_reconstruction",
                 "selection_se"):
        cols[name] = got.column(name)
    fields = list(POINT_FIXED)
    for key, kind in dotted_columns().items():
        cols[key] = settings[key]
        fields.append((key, ARROW_TYPES[kind]))
    for name in POINT_EXTRA:
        cols[name] = got.column(name)
        fields.append((name, DONE_SCHEMA.field(name).type))
    schema = pa.schema(fields, metadata={"schema_version": str(SCHEMA_VERSION)})
    return pa.table({f.name: _array(cols[f.name], f.type) for f in schema}, schema=schema)


def _array(values, type_: pa.DataType):
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(type_)
    values = np.asarray(values)
    if values.dtype == object:
        return pa.array(values.tolist(), type_)
    return pa.array(values, type_)
