"""The store writer of one trial: buffers its checkpoints and stages its four files.

A worker's `TrialWriter` keeps every checkpoint (numpy) while the trainer runs — weights
stream into their staged file as checkpoints arrive, every checkpoint's while one point's
weights over time stay under ``sweep.weights_history_max_bytes``, else the final ones only —
then writes the trial's metrics, features and done rows into the same fresh staging folder
(``_staging/g<generation>-<trial_key>-<nonce>/``). Nothing there is visible to readers; the
driver commits the folder (sweeps.store.SweepStore.commit) when the trial reports it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from sweeps.store import PartWriter, SweepStore
from sweeps.tables import DONE_SCHEMA, FEATURES_SCHEMA, METRICS_SCHEMA, ROW_GROUP_ROWS, WEIGHTS_SCHEMA


def weights_history_bytes(spec) -> int:
    """Bytes of one point's weights at every checkpoint (W, b, and W2 for ``abs``, float32)."""
    from toymodels import checkpoint_steps

    m, n = spec.model.n_hidden, spec.model.n_features
    per_checkpoint = 4 * (m * n * (2 if spec.model.kind == "abs" else 1) + n)
    return per_checkpoint * len(checkpoint_steps(spec.train))


DATA_DIMENSIONALITY = {"data_dimensionality": np.sum, "data_dimensionality_max": np.max}
"""The metrics columns summarising the data-point dimensionalities D_t [points, T] of a checkpoint."""


def _metric(ck, key: str) -> np.ndarray:
    """One metrics column of a checkpoint, float32 [points]. ``data_dimensionality`` is Σ_t D_t and
    ``data_dimensionality_max`` max_t D_t over the training set's points (finite datasets of up
    to 4,096 rows), NaN without one."""
    if key in DATA_DIMENSIONALITY:
        d = ck.data_dimensionality
        if d is None:
            return np.full(len(ck.loss), np.nan, np.float32)
        return DATA_DIMENSIONALITY[key](np.asarray(d, np.float64), axis=1).astype(np.float32)
    return np.asarray(getattr(ck, key), dtype=np.float32).copy()


class TrialWriter:
    """Buffers one trial's checkpoints and stages its rows for the driver to commit."""

    def __init__(self, store: SweepStore, trial_key: str, point_ids: list[str], generation: int,
                 weights_history: bool = True):
        self.store, self.trial_key, self.generation = store, trial_key, generation
        self.staged = store.staging(generation, trial_key)
        self.ids = pa.array(point_ids, pa.string())
        self.weights_history = weights_history
        self.steps: list[int] = []
        self.metrics: dict[str, list[np.ndarray]] = {
            k: [] for k in ("loss", "train_loss", "frob", "d_star", "lr", "reconstruction", "penalty",
                            *DATA_DIMENSIONALITY)}
        self.features: dict[str, list[np.ndarray]] = {k: [] for k in ("norm", "interference", "dimensionality", "bias")}
        self.weights: PartWriter | None = None

    def add(self, ck) -> None:
        """Keep one checkpoint (a toymodels Checkpoint: arrays with a leading points axis); a step
        already kept (a resumed trial's history given again) is skipped."""
        if self.steps and int(ck.step) <= self.steps[-1]:
            return
        self.steps.append(int(ck.step))
        for k, buf in self.metrics.items():
            buf.append(_metric(ck, k))
        for k, buf in self.features.items():
            buf.append(np.asarray(getattr(ck, k), dtype=np.float32).copy())
        if self.weights_history or ck.final:
            if self.weights is None:
                self.weights = self.store.part_writer(f"{self.staged}/weights.parquet", WEIGHTS_SCHEMA)
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
        with self.store.part_writer(f"{self.staged}/features.parquet", FEATURES_SCHEMA) as w:
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
        flat = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a[0].size).cast(pa.list_(pa.float32()))  # noqa: E731
        W2 = (flat(np.asarray(ck.W2, np.float32)) if ck.W2 is not None
              else pa.nulls(n_pts, pa.list_(pa.float32())))
        return pa.table({"point_id": self.ids, "n_hidden": pa.array(np.full(n_pts, m, np.int32)),
                         "n_features": pa.array(np.full(n_pts, n, np.int32)),
                         "W": flat(W), "b": flat(np.asarray(ck.b, np.float32)), "W2": W2,
                         "step": pa.array(np.full(n_pts, int(ck.step), np.int64))},
                        schema=WEIGHTS_SCHEMA)

    def stage_metrics(self) -> None:
        self.store.write_table(f"{self.staged}/metrics.parquet", self.metrics_table())

    def stage_rest(self, result, info: dict) -> pa.Table:
        """Features, weights, then the done rows (staged last). Returns the done rows."""
        self.write_features(np.asarray(result.importance), np.asarray(result.density))
        self.weights.commit()
        self.weights = None
        done = self.done_table(result, info)
        self.store.write_table(f"{self.staged}/done.parquet", done)
        return done

    def done_table(self, result, info: dict) -> pa.Table:
        n_pts = len(self.ids)
        div = np.asarray(result.diverged_step, np.int64)
        last_loss = self.metrics["loss"][-1].astype(np.float64)
        last_d = self.metrics["d_star"][-1].astype(np.float64)
        now = datetime.now(timezone.utc)
        const = lambda v, t: pa.array([v] * n_pts, t)  # noqa: E731
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
            "generation": const(self.generation, pa.int64()),
            "resumed_step": const(info.get("resumed_step"), pa.int64()),
        }, schema=DONE_SCHEMA)
