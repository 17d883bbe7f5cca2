"""The selection loss: each point's expected objective, measured on data all seeds share.

Best-of-N must rank seeds by their models, not by the noise of a small batch, and the solutions
it chooses among differ by a few per cent. Plain Monte Carlo cannot resolve that for few features
at low density: at density 0.01 with n = 5, a superposed solution's loss comes from rows in which
two features are active — one row in a thousand — and mostly from a few value combinations among
those. So, for independent features with few active per row (Σ_i p_i < :data:`STRATIFY_BELOW`),
the expectation is split by the number K of active features (stratified sampling):

    E[L] = Σ_{k < k₀} P(K=k)·E[L | K=k] + P(K≥k₀)·E[L | K≥k₀]

- K = 0: the all-zero row, exact.
- K = 1: feature i with probability ∝ p_i·Π_{j≠i}(1 − p_j), its value integrated by the midpoint
  rule on :data:`QUADRATURE_POINTS` points (above :data:`QUADRATURE_MAX_FEATURES` features the
  stratum is sampled instead, and k₀ = 2).
- K = 2 (up to :data:`PAIR_QUADRATURE_MAX_PAIRS` pairs): every pair {i, j}, its two values on a
  :data:`PAIR_QUADRATURE_POINTS`² midpoint grid; then k₀ = 3.
- K ≥ k₀: ``rows`` rows drawn from the data distribution conditioned on K ≥ k₀ — the first k₀
  active features by inverse CDF (a dynamic programme over P(≥ r active among features ≥ i)),
  the features after the last of them as usual — so every sampled row counts.

Otherwise (correlated or anticorrelated sets, inputs normalised to unit norm, or Σ_i p_i ≥ 2)
it is plain Monte Carlo over ``rows`` rows of the data distribution, drawn sparse for points
trained on sparse inputs (toymodels/sparse.py). All uniforms come from the counter-based generator
keyed by ``train.eval_seed`` (the selection stream), so every seed of a grid cell is scored on
the same rows (common random numbers) and a point's value never depends on its pack. The
standard error comes from the sampled strata's variances (the quadratures' errors, below
10⁻³ of the loss, are not in it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import rng
from .data import Structure, feature_batch
from .streams import SELECT_BLOCK_ROWS
from .models import row_objective
from .sparse import Tables, chunk_rows, draw, row_objective_and_grads

STRATIFY_BELOW = 2.0
"""Stratify by K when the expected number of active features per row, Σ_i p_i, is below this."""
QUADRATURE_POINTS = 128
"""Midpoints on which a single active feature's value is integrated (K = 1)."""
QUADRATURE_MAX_FEATURES = 1024
"""Above this many features the K = 1 stratum is sampled instead of integrated."""
PAIR_QUADRATURE_POINTS = 32
"""Midpoints per value on which two active features are integrated (K = 2)."""
PAIR_QUADRATURE_MAX_PAIRS = 128
"""The K = 2 stratum is integrated when the model has at most this many feature pairs (n ≤ 16)."""
CHUNK_VALUES = 1 << 18
"""Input values per instance-pack built at once (bounds the memory of the estimate)."""


@dataclass
class Selection:
    """The selection estimate of every instance (float64 tensors [instances] on the CPU)."""

    reconstruction: torch.Tensor
    """Expected reconstruction loss."""
    penalty: torch.Tensor
    """Expected L1 penalty (zeros without one)."""
    standard_error: torch.Tensor
    """Standard error of reconstruction + penalty."""

    @property
    def loss(self) -> torch.Tensor:
        return self.reconstruction + self.penalty


class _Moments:
    """Running per-instance sums of the rows' reconstruction, penalty and squared objective."""

    def __init__(self, instances: int):
        self.rec = torch.zeros(instances, dtype=torch.float64)
        self.pen = torch.zeros(instances, dtype=torch.float64)
        self.sq = torch.zeros(instances, dtype=torch.float64)
        self.count = 0

    def add(self, rec: torch.Tensor, pen: torch.Tensor) -> None:
        """The rows' values, [I, R] each."""
        rec, pen = rec.to("cpu", torch.float64), pen.to("cpu", torch.float64)
        self.rec += rec.sum(dim=1)
        self.pen += pen.sum(dim=1)
        self.sq += ((rec + pen) ** 2).sum(dim=1)
        self.count += rec.shape[1]

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rec / self.count, self.pen / self.count

    def variance_of_mean(self) -> torch.Tensor:
        mean = (self.rec + self.pen) / self.count
        var = torch.clamp(self.sq / self.count - mean ** 2, min=0.0)
        return var / max(self.count - 1, 1)


def _uniforms(keys: torch.Tensor, first_block: int, blocks: int, width: int) -> torch.Tensor:
    """Uniforms in (0, 1] of ``blocks`` selection blocks: float32 [I, width, blocks · SELECT_BLOCK_ROWS]."""
    dev = keys.device
    steps = torch.arange(first_block, first_block + blocks, dtype=torch.int32, device=dev)
    counter = torch.arange(width * SELECT_BLOCK_ROWS, dtype=torch.int32, device=dev).view(1, width, 1, -1)
    u = rng.uniform(counter, rng.step_keys(keys, steps)).view(keys.shape[0], width, -1)
    return 1.0 - u


def _chunks(total_blocks: int, values_per_block: int) -> list[tuple[int, int]]:
    per = max(1, min(total_blocks, CHUNK_VALUES // max(1, values_per_block)))
    return [(b, min(per, total_blocks - b)) for b in range(0, total_blocks, per)]


def selection(kind: str, structure: Structure, params: tuple[torch.Tensor, ...], density: torch.Tensor,
              importance: torch.Tensor, l1: torch.Tensor | None, keys: torch.Tensor, set_keys: torch.Tensor,
              rows: int) -> Selection:
    """The selection estimate of every instance.

    params as in :func:`toymodels.models.loss_and_grads`; density [I, n] (float32); importance
    [I, n, 1]; l1 [I, 1, 1] or None; keys, set_keys: the selection stream's keys
    (:func:`toymodels.streams.stream_keys`); rows: Monte Carlo rows, a multiple of 1024.
    """
    blocks = rows // SELECT_BLOCK_ROWS
    I, n = density.shape
    stratify = (density.double().sum(dim=1) < STRATIFY_BELOW).cpu()
    if structure.correlation != "none" or structure.normalize or structure.sparse:
        stratify[:] = False
    out = Selection(*(torch.zeros(I, dtype=torch.float64) for _ in range(3)))
    group = max(1, CHUNK_VALUES // (n * SELECT_BLOCK_ROWS))        # instances estimated together
    for method, chosen in ((_stratified, stratify), (_plain_sparse if structure.sparse else _plain, ~stratify)):
        where = torch.nonzero(chosen).flatten()
        for lo in range(0, where.numel(), group):
            part_idx = where[lo:lo + group]
            on = part_idx.to(density.device)
            pick = lambda t: None if t is None else t[on]  # noqa: E731 - the chosen instances' rows
            part = method(kind, structure, tuple(t[on] for t in params), density[on], importance[on], pick(l1),
                          keys[on], set_keys[on], blocks)
            for name in ("reconstruction", "penalty", "standard_error"):
                getattr(out, name)[part_idx] = getattr(part, name)
    return out


def _plain(kind, structure, params, density, importance, l1, keys, set_keys, blocks: int) -> Selection:
    I, n = density.shape
    moments = _Moments(I)
    for first, count in _chunks(blocks, I * n * SELECT_BLOCK_ROWS):
        step = torch.tensor(first, dtype=torch.int32, device=density.device)
        X = feature_batch(structure, keys, set_keys, step, density.unsqueeze(-1), SELECT_BLOCK_ROWS, count)
        moments.add(*row_objective(kind, params, X, importance, l1))
    rec, pen = moments.mean()
    return Selection(rec, pen, moments.variance_of_mean().sqrt())


def _plain_sparse(kind, structure, params, density, importance, l1, keys, set_keys, blocks: int) -> Selection:
    I, n = density.shape
    tables = Tables(density)
    data = (tables.count_cdf, tables.cap, tables.feature_cdf)
    moments = _Moments(I)
    per = chunk_rows(n, SELECT_BLOCK_ROWS)
    for block in range(blocks):
        step = torch.tensor(block, dtype=torch.int32, device=density.device)
        for first in range(0, SELECT_BLOCK_ROWS, per):
            rows = torch.arange(first, first + per, dtype=torch.int32, device=density.device)
            feat, val = draw(structure, data, keys, step, rows, tables.slots)
            rec, pen, _ = row_objective_and_grads(kind, params, feat, val, importance, l1, 1, need_grads=False)
            moments.add(rec, pen)
    rec, pen = moments.mean()
    return Selection(rec, pen, moments.variance_of_mean().sqrt())


def _signed(x: torch.Tensor, signed: bool) -> torch.Tensor:
    return torch.where(x != 0, 2.0 * x - 1.0, 0.0) if signed else x


def _suffix_at_least(p: torch.Tensor, r_max: int) -> list[torch.Tensor]:
    """R[r][:, i] = P(at least r of the features i, i+1, …, n−1 are active): float64 [I, n+1] each."""
    I, n = p.shape
    R = [torch.ones(I, n + 1, dtype=p.dtype, device=p.device)]
    for r in range(1, r_max + 1):
        Rr = torch.zeros(I, n + 1, dtype=p.dtype, device=p.device)
        prev = R[r - 1]
        for i in range(n - 1, -1, -1):
            Rr[:, i] = p[:, i] * prev[:, i + 1] + (1 - p[:, i]) * Rr[:, i + 1]
        R.append(Rr)
    return R


def _grid(points: int, signed: bool, device) -> torch.Tensor:
    """Midpoints of ``points`` equal cells of [0, 1] (of [−1, 1] when ``signed``): float32 [points]."""
    return _signed((torch.arange(points, dtype=torch.float32, device=device) + 0.5) / points, signed)


def _stratified(kind, structure: Structure, params, density, importance, l1, keys, set_keys, blocks: int) -> Selection:
    I, n = density.shape
    dev = density.device
    p = density.to(torch.float64)
    pc = torch.clamp(p, max=1 - 1e-9)                        # keeps P(K = k) finite when some p_i = 1
    odds = pc / (1 - pc)
    p_none = torch.exp(torch.log1p(-pc).sum(dim=1))          # P(K = 0), [I]
    quad_one = n <= QUADRATURE_MAX_FEATURES
    quad_two = quad_one and n * (n - 1) // 2 <= PAIR_QUADRATURE_MAX_PAIRS
    k0 = 3 if quad_two else 2                                   # K < k0 integrated (or K = 1 sampled)
    signed = structure.signed

    def objective(X: torch.Tensor):
        return row_objective(kind, params, X, importance, l1)

    def exact_stratum(members: torch.Tensor, grid: torch.Tensor, prob: torch.Tensor):
        """Σ_t prob[:, t] × the grid mean of the objective with only the features members[t] active.

        members: int64 [T, k]; grid: float32 [G, k], the values' grid (each row one combination);
        prob: float64 [I, T]. Returns (reconstruction [I], penalty [I]).
        """
        T, k = members.shape
        size = grid.shape[0]
        out_rec = torch.zeros(I, dtype=torch.float64)
        out_pen = torch.zeros(I, dtype=torch.float64)
        per = max(1, CHUNK_VALUES // max(1, I * n * size))
        for lo in range(0, T, per):
            chunk = members[lo:lo + per]
            t = chunk.shape[0]
            X = torch.zeros(I, n, t, size, dtype=torch.float32, device=dev)
            for c in range(k):
                X[:, chunk[:, c], torch.arange(t, device=dev), :] = grid[:, c]
            r, q = objective(X.view(I, n, t * size))
            w = prob[:, lo:lo + t].cpu()
            out_rec += (r.double().cpu().view(I, t, size).mean(dim=2) * w).sum(dim=1)
            out_pen += (q.double().cpu().view(I, t, size).mean(dim=2) * w).sum(dim=1)
        return out_rec, out_pen

    rec = torch.zeros(I, dtype=torch.float64)
    pen = torch.zeros(I, dtype=torch.float64)
    var = torch.zeros(I, dtype=torch.float64)

    # K = 0: the all-zero row.
    r0, q0 = objective(torch.zeros(I, n, 1, dtype=torch.float32, device=dev))
    w0 = p_none.cpu()
    rec += w0 * r0[:, 0].double().cpu()
    pen += w0 * q0[:, 0].double().cpu()

    # K = 1: one active feature, P(only i) = P(K=0)·odds_i.
    single = p_none[:, None] * odds                                          # [I, n]
    if quad_one:
        grid = _grid(QUADRATURE_POINTS, signed, dev).view(-1, 1)
        r1, q1 = exact_stratum(torch.arange(n, device=dev).view(n, 1), grid, single)
        rec, pen = rec + r1, pen + q1
    # K = 2: every pair on a grid, P({i, j} only) = P(K=0)·odds_i·odds_j.
    if quad_two:
        i, j = torch.triu_indices(n, n, offset=1, device=dev)
        g = _grid(PAIR_QUADRATURE_POINTS, signed, dev)
        grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).view(-1, 2)
        r2, q2 = exact_stratum(torch.stack([i, j], dim=1), grid, p_none[:, None] * odds[:, i] * odds[:, j])
        rec, pen = rec + r2, pen + q2

    # K = 1 sampled (for many features only), then K ≥ k0 conditioned.
    R = _suffix_at_least(pc, k0)
    A = torch.exp(torch.cat([torch.zeros(I, 1, dtype=torch.float64, device=dev),
                             torch.cumsum(torch.log1p(-pc), dim=1)[:, :-1]], dim=1))  # Π_{l<i}(1 − p_l)
    idx = torch.arange(n, device=dev).view(1, n, 1)
    dens = density.unsqueeze(-1)
    strata = [] if quad_one else [("one", single.sum(dim=1), [torch.cumsum(single, dim=1)], 1 << 20)]
    # The s-th active feature (s = 0 … k0−1) after the previous one has weight A_j p_j P(≥ k0−1−s after j).
    strata.append(("at least", R[k0][:, 0], [torch.cumsum(A * pc * R[k0 - 1 - s][:, 1:], dim=1)
                                             for s in range(k0)], 0))
    for what, weight, cdfs, offset in strata:
        if not bool((weight > 0).any()):
            continue
        k = len(cdfs)
        moments = _Moments(I)
        for first, count in _chunks(blocks, I * (n + 2 * k) * SELECT_BLOCK_ROWS):
            u = _uniforms(keys, offset + first, count, n + 2 * k)                # [I, n + 2k, R]
            X = torch.zeros_like(u[:, :n])
            prev = torch.full((I, u.shape[2]), -1, dtype=torch.int64, device=dev)
            for s, cdf in enumerate(cdfs):                                       # inverse CDF, in order
                below = torch.gather(cdf, 1, prev.clamp(min=0)) * (prev >= 0)
                target = below + u[:, n + s].double() * (cdf[:, -1:] - below)
                prev = torch.maximum(torch.clamp(torch.searchsorted(cdf, target), max=n - 1),
                                     torch.clamp(prev + 1, max=n - 1))
                X = X + (idx == prev.unsqueeze(1)) * u[:, n + k + s].unsqueeze(1)
            if what == "at least":                                               # the rest drawn as usual
                X = X + torch.where(u[:, :n] < dens, u[:, :n] / dens, 0.0) * (idx > prev.unsqueeze(1))
            moments.add(*objective(_signed(X, signed)))
        r, q = moments.mean()
        w = weight.cpu()
        rec, pen = rec + w * r, pen + w * q
        var += w ** 2 * moments.variance_of_mean()
    return Selection(rec, pen, var.sqrt())
