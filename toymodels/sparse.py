"""Sparse inputs: each row's active features, drawn directly, and the model evaluated on them.

At n = 10⁴ features and density 10⁻³ a dense batch is 99.9 % zeros. Here a row is its active
features only: ``feat`` (int64) and ``val`` (float32), both [instances, rows, K], K slots per row.

**Sampling (exact, by Poissonization).** With λ_i = −ln(1 − p_i) and Λ = Σ_i λ_i, a row draws
N ~ Poisson(Λ) events, each naming feature i with probability λ_i/Λ and carrying a Uniform[0, 1)
value (Uniform[−1, 1) for ``abs``). The number of events naming feature i is then Poisson(λ_i),
independently across features (Poisson splitting), so feature i is active — named at least once —
with probability 1 − e^{−λ_i} = p_i, independently of the others: the dense generator's
distribution. A feature named twice keeps its first event's value. K is the smallest count with
P(N > K) < 2⁻⁴⁰ (:func:`slots`); N is capped at each instance's own K, so a draw never depends on
the pack (P(cap) < 2⁻⁴⁰ per row).

**The stream.** Row r of step t has its own keys — the step's keys (toymodels/rng.py) folded with
r — so a row's inputs depend on the seed, the step and the row alone: never on the pack, the
block, or how rows are chunked. Within a row, counters 0–1 give N (48 random bits), 2 + 2k and
3 + 2k slot k's feature (48 bits, by inverse CDF), 2³⁰ + k its value (24 bits). The rows of a
batch are processed in chunks of :func:`chunk_rows` rows to bound memory.

**The model.** The input side uses the active features only: h = Σ_k W[:, feat_k]·val_k and the
gradient of W's input role is scattered back onto the active columns. The output side stays
exact: x' is computed for every feature of every row (the ReLU on the output must see every
feature) as the objective of a zero target — its loss Σ imp·y², its gradient dout = 2·imp·y and
dout's products dh = W·dout, W's output gradient h·doutᵀ and b's Σ dout — and the targets, nonzero
only at the active features, enter as corrections there alone: x' at those positions recomputed
from W's active columns, the loss's imp·((y − x)² − y²), and the gradient's −2·imp·x whose products
with W and h take K columns per row. No [n, rows] tensor is gathered from or scattered into. At
m ≤ :data:`UNROLL_HIDDEN` the dense part is written as m pointwise terms per product, which the
compiler fuses into two loops over [n, rows]; above it, batched matrix products. The sampler's
inverse-CDF lookups use :func:`search`, a branchless binary search the compiler fuses (the same
result as ``searchsorted``). Shapes: W [I, m, n], b [I, n, 1], W2 [I, n, m] as in
toymodels/models.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import rng
from .data import NORM_FLOOR, Structure

TAIL = 2.0 ** -40
"""Probability per row that more than K events are drawn (and the extra ones dropped)."""
CHUNK_BYTES = 32 << 20
"""Dense output-side activations of one instance's chunk of rows (out, output and its gradient)."""
VALUE_COUNTER = 1 << 30
"""First counter of the slots' values within a row."""


def slots(rate: float) -> int:
    """K: the smallest k with P(N > k) < :data:`TAIL` for N ~ Poisson(``rate``)."""
    top = int(rate + 12 * math.sqrt(rate) + 60)
    j = np.arange(top + 1)
    log_pmf = j * math.log(max(rate, 1e-300)) - rate - np.array([math.lgamma(x + 1) for x in j])
    tail = np.cumsum(np.exp(log_pmf)[::-1])[::-1]                  # tail[j] = P(N ≥ j)
    return max(1, int(np.argmax(tail < TAIL)) - 1)


def search(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``torch.searchsorted(cdf, u, right=True)``: per value, how many entries of its row of ``cdf`` are ≤ it.

    cdf: nondecreasing [I, L]; u: [I, S] of cdf's dtype. Returns int64 [I, S], in [0, L]. A
    branchless binary search of ⌊log₂ L⌋ + 1 gathers, which the compiler fuses into one loop over
    ``u`` (about 3× faster than ``searchsorted`` on a CPU at L = 10⁴); the result is the same.
    """
    L = cdf.shape[1]
    pos = torch.zeros(u.shape, dtype=torch.int64, device=u.device)
    step = 1 << (L.bit_length() - 1)
    while step:
        ahead = pos + step
        pos = torch.where((ahead <= L) & (cdf.gather(1, torch.clamp(ahead - 1, max=L - 1)) <= u), ahead, pos)
        step >>= 1
    return pos


def chunk_rows(n_features: int, rows: int) -> int:
    """Rows per chunk: the largest divisor of ``rows`` whose output-side activations fit :data:`CHUNK_BYTES`."""
    most = max(1, CHUNK_BYTES // (12 * n_features))
    return max(d for d in range(1, min(rows, most) + 1) if rows % d == 0)


class Tables:
    """What the sampler needs about each instance's densities (built once per pack).

    count_cdf: float64 [I, K], P(N ≤ j) for j < K; cap: int64 [I], each instance's own K;
    feature_cdf: float64 [I, n], Σ_{j ≤ i} λ_j / Λ; slots: K of the pack (the largest cap).
    """

    def __init__(self, density: torch.Tensor):
        p = density.detach().to("cpu", torch.float64)
        if bool((p >= 1).any()):
            raise ValueError("sparse inputs need every density below 1")
        lam = -torch.log1p(-p)
        rate = lam.sum(dim=1)
        caps = [slots(float(r)) for r in rate]
        self.slots = max(caps)
        j = torch.arange(self.slots, dtype=torch.float64)
        log_pmf = j * torch.log(torch.clamp(rate, min=1e-300)).unsqueeze(1) - rate.unsqueeze(1) - torch.lgamma(j + 1)
        dev = density.device
        self.count_cdf = torch.cumsum(torch.exp(log_pmf), dim=1).to(dev)
        self.cap = torch.tensor(caps, dtype=torch.int64, device=dev)
        self.feature_cdf = (torch.cumsum(lam, dim=1) / torch.clamp(rate, min=1e-300).unsqueeze(1)).to(dev)

    def split(self, size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per block of ``size`` instances: (count_cdf, cap, feature_cdf)."""
        return list(zip(self.count_cdf.split(size), self.cap.split(size), self.feature_cdf.split(size)))


def draw(structure: Structure, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], keys: torch.Tensor,
         step: torch.Tensor, rows: torch.Tensor, slots_: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The active features of some rows of one step.

    tables: (count_cdf, cap, feature_cdf) of these instances (:class:`Tables`); keys: int32
    [I, 2, 1, 1]; step: int32 0-d; rows: int32 [R], the rows' indices in the step's batch;
    slots_: K. Returns (feat int64 [I, R, K], val float32 [I, R, K]): sorted by feature within a
    row, unused slots with value 0 (and a valid feature index).
    """
    count_cdf, cap, feature_cdf = tables
    I, n, R = keys.shape[0], structure.n_features, rows.shape[0]
    dev = keys.device
    rk = rng.row_keys(keys, step, rows)                                          # [I, 2, R, 1]
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=dev)
    count = search(count_cdf, rng.uniform48(zero, rk).view(I, R))
    count = torch.minimum(count, cap.view(I, 1))                                 # [I, R]
    k = torch.arange(slots_, dtype=torch.int32, device=dev).view(1, 1, 1, slots_)
    u = rng.uniform48(1 + k, rk).view(I, R * slots_)
    feat = torch.clamp(search(feature_cdf, u), max=n - 1).view(I, R, slots_)
    val = rng.uniform(VALUE_COUNTER + k, rk).view(I, R, slots_)
    if structure.signed:
        val = 2.0 * val - 1.0
    live = torch.arange(slots_, device=dev).view(1, 1, slots_) < count.unsqueeze(-1)
    feat = torch.where(live, feat, n)                                            # unused slots sort last
    feat, order = torch.sort(feat, dim=-1, stable=True)
    val = torch.where(feat < n, val.gather(-1, order), 0.0)
    repeat = torch.cat([torch.zeros_like(feat[..., :1], dtype=torch.bool), feat[..., 1:] == feat[..., :-1]], dim=-1)
    val = torch.where(repeat, 0.0, val)                                          # a feature counts once
    if structure.normalize:
        val = val / torch.clamp(torch.linalg.vector_norm(val, dim=-1, keepdim=True), min=NORM_FLOOR)
    return torch.clamp(feat, max=n - 1), val


def dense(feat: torch.Tensor, val: torch.Tensor, n_features: int) -> torch.Tensor:
    """The rows as a dense feature-major batch: float32 [I, n, R]."""
    I, R, K = feat.shape
    x = torch.zeros(I, R, n_features, dtype=val.dtype, device=val.device)
    return x.scatter_add(2, feat, val).transpose(1, 2)


def _columns(M: torch.Tensor, index: torch.Tensor, R: int, K: int) -> torch.Tensor:
    """The active features' columns of M [I, m, n] (index int64 [I, R·K, 1]): [I, R, K, m]."""
    I, m = M.shape[0], M.shape[1]
    return M.transpose(1, 2).gather(1, index.expand(I, R * K, m)).view(I, R, K, m)


def _pre(columns: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """W x for sparse rows from W's active columns [I, R, K, m] and val [I, R, K]: [I, m, R]."""
    return (columns.permute(0, 3, 1, 2) * val.unsqueeze(1)).sum(dim=3)            # laid out [I, m, R]


def sparse_hidden(kind: str, W: torch.Tensor, feat: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """Hidden activations h [I, m, R] of sparse rows (W is W1 for ``abs``)."""
    pre = _pre(_columns(W, feat.reshape(feat.shape[0], -1, 1), feat.shape[1], feat.shape[2]), val)
    return pre if kind in ("linear", "relu_out") else torch.relu(pre)


UNROLL_HIDDEN = 2
"""Largest m for which the dense output side is written as m pointwise terms per product, which
the compiler fuses into two loops over [n, rows] (out, the ReLU, the loss and every reduction of
its gradient); above it, three batched matrix products (out, W's output gradient, dh), as in
toymodels/models.py. Measured at n = 10⁴ (docs/performance.md): at m = 2 the fused loops are
10–20 % faster than the products, at m = 3–4 about equal, at m = 8 1.7× slower."""


def _dense_output_side(A: torch.Tensor, b: torch.Tensor, h: torch.Tensor, importance: torch.Tensor,
                       relu: bool, scale: float, need_grads: bool):
    """The output side on every feature of every row, for zero targets.

    A [I, m, n] (out = Aᵀh + b), b [I, n, 1], h [I, m, R], importance [I, n, 1]. Returns
    (reconstruction [I, R], then with ``need_grads``: the output gradient's products
    dh = A·dout [I, m, R], gA = h·doutᵀ [I, m, n] and gb = Σ_rows dout [I, n]; else None × 3),
    where dout = 2·scale·importance·y, y = ReLU(out) (out itself without ``relu``).
    """
    m = A.shape[1]
    unrolled = m <= UNROLL_HIDDEN
    if unrolled:
        out = b + sum(A[:, j].unsqueeze(-1) * h[:, j].unsqueeze(1) for j in range(m))          # I n R
    else:
        out = torch.bmm(A.transpose(1, 2), h) + b
    y = torch.relu(out) if relu else out
    rec = scale * (importance * y * y).sum(dim=1)
    if not need_grads:
        return rec, None, None, None
    dout = (2.0 * scale) * importance * y
    if unrolled:
        dh = torch.stack([(A[:, j].unsqueeze(-1) * dout).sum(dim=1) for j in range(m)], dim=1)
        gA = torch.stack([(h[:, j].unsqueeze(1) * dout).sum(dim=2) for j in range(m)], dim=1)
    else:
        dh = torch.bmm(A, dout)
        gA = torch.bmm(h, dout.transpose(1, 2))
    return rec, dh, gA, dout.sum(dim=2)


def row_objective_and_grads(kind: str, params: tuple[torch.Tensor, ...], feat: torch.Tensor, val: torch.Tensor,
                            importance: torch.Tensor, l1: torch.Tensor | None, total_rows: int,
                            need_grads: bool = True):
    """The objective's two parts per row, and the gradients of their sum, on sparse rows.

    params: (W, b) or (W1, W2, b) with b [I, n, 1]; feat, val: [I, R, K] (:func:`draw`);
    importance [I, n, 1]; l1: λ as [I, 1, 1] or None. Every term is divided by
    n_features × ``total_rows`` (the whole batch), so the sums over a batch's chunks of rows are
    the batch's means, as in :func:`toymodels.models.loss_and_grads`.
    Returns (reconstruction [I, R], penalty [I, R], grads shaped like params, or None).

    The output side is the zero-target objective on every feature (:func:`_dense_output_side`)
    plus corrections at the active features, which carry the targets: out there is recomputed
    from the output weights' active columns, the loss gains imp·((y − x)² − y²) and the output
    gradient −2·scale·imp·x (where out > 0 unless ``linear``), whose products with A and h are
    taken on those columns alone (and scattered back onto them for A's gradient).
    """
    W_in, b = params[0], params[-1]
    I, m, n = W_in.shape
    R, K = feat.shape[1], feat.shape[2]
    scale = 1.0 / (n * total_rows)
    index = feat.reshape(I, R * K, 1)
    columns = _columns(W_in, index, R, K)                                          # I R K m
    pre = _pre(columns, val)                                                       # I m R
    h = pre if kind in ("linear", "relu_out") else torch.relu(pre)
    A = params[1].transpose(1, 2) if kind == "abs" else W_in                       # I m n: out = Aᵀh + b
    rec, dh, gA, gb = _dense_output_side(A, b, h, importance, kind != "linear", scale, need_grads)
    A_at = _columns(A, index, R, K) if kind == "abs" else columns                 # I R K m
    flat = feat.reshape(I, R * K)
    out_at = (A_at * h.transpose(1, 2).unsqueeze(2)).sum(dim=-1) + b.view(I, n).gather(1, flat).view(I, R, K)
    y_at = out_at if kind == "linear" else torch.relu(out_at)
    target = val.abs() if kind == "abs" else val                                   # I R K
    imp_at = importance.view(I, n).gather(1, flat).view(I, R, K)
    rec = rec + scale * (imp_at * ((y_at - target) ** 2 - y_at * y_at)).sum(dim=2)
    penalty = torch.zeros_like(rec) if l1 is None else (l1.view(I, 1) * scale) * h.abs().sum(dim=1)
    if not need_grads:
        return rec, penalty, None
    fix = -2.0 * scale * imp_at * target                                           # the targets' part of dout
    if kind != "linear":
        fix = fix * (out_at > 0)
    dh = dh + (A_at * fix.unsqueeze(-1)).sum(dim=2).transpose(1, 2)
    gb = gb.scatter_add(1, flat, fix.view(I, R * K)).unsqueeze(-1)
    if l1 is not None:
        sign = torch.sign(pre) if kind in ("linear", "relu_out") else (pre > 0).to(pre.dtype)
        dh = dh + (l1 * scale) * sign
    if kind in ("relu_hidden", "abs"):
        dh = dh * (pre > 0)
    spread = index.expand(I, R * K, m)
    g_in = (dh.transpose(1, 2).unsqueeze(2) * val.unsqueeze(-1)).reshape(I, R * K, m)      # onto W_in's columns
    g_fix = (h.transpose(1, 2).unsqueeze(2) * fix.unsqueeze(-1)).reshape(I, R * K, m)     # onto A's columns
    if kind == "abs":
        g_W1 = torch.zeros(I, n, m, dtype=dh.dtype, device=dh.device).scatter_add(1, spread, g_in).transpose(1, 2)
        return rec, penalty, (g_W1, gA.transpose(1, 2).scatter_add(1, spread, g_fix), gb)
    return rec, penalty, (gA.transpose(1, 2).scatter_add(1, spread, g_in + g_fix).transpose(1, 2), gb)
