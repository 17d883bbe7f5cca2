"""Per-feature geometry of W: norm, interference, dimensionality; and D* for the whole model.

With W [instances, n_hidden, n_features], column W_i is feature i's direction, Ŵ_i = W_i/‖W_i‖:

- norm ‖W_i‖ (≈1 represented, ≈0 not);
- interference Σ_{j≠i} (Ŵ_i·W_j)² (0 when orthogonal to all others);
- dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², the sum including j = i
  (dedicated 1, antipodal pair 1/2, pentagon 2/5; 0 for columns with ‖W_i‖ below a threshold);
- ‖W‖_F² and D* = n_hidden / ‖W‖_F².

One definition for both array kinds: a torch tensor in gives torch tensors out (the trainer,
on its device), a numpy array in gives numpy arrays out (the analysis). This module imports
numpy only; torch is used only when a tensor is passed, so it is already loaded.
"""

from __future__ import annotations

import sys

import numpy as np

NORM_THRESHOLD = 1e-3
"""Columns with ‖W_i‖ below this count as not represented: D_i = 0, interference 0."""


GRAM_ABOVE = 4096
"""Above this many features the interference sums come from the m×m Gram matrix W Wᵀ instead of
the n×n matrix of dot products (n = 10⁵ would need 40 GB per instance); equal up to rounding."""


def _is_torch(W) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(W, torch.Tensor)


def feature_metrics(W, norm_threshold: float = NORM_THRESHOLD) -> dict:
    """Metrics of W [instances, n_hidden, n_features] (a single [n_hidden, n_features] also works).

    W is a torch tensor or anything numpy takes. Returns, in W's kind, ``norm``,
    ``interference``, ``dimensionality`` [instances, n_features] and ``frob``, ``d_star``
    [instances] (without the instances axis for a single W). A column counts as learned when
    ‖W_i‖ >= ``norm_threshold``. Never NaN for finite W. Computed in float64 when W is float64,
    else in float32 (torch) or float64 (numpy).
    """
    if _is_torch(W):
        import torch

        W = W.to(torch.float64) if W.dtype == torch.float64 else W.to(torch.float32)
        where, sqrt = torch.where, torch.sqrt
    else:
        W = np.asarray(W, dtype=np.float64)
        where, sqrt = np.where, np.sqrt
    single = W.ndim == 2
    if single:
        W = W[None]
    norm = sqrt((W * W).sum(axis=1))                               # I n
    learned = norm >= norm_threshold
    W_hat = W / where(learned, norm, 1.0)[:, None, :] * learned[:, None, :]
    if W.shape[2] <= GRAM_ABOVE:
        dots = W_hat.swapaxes(1, 2) @ W                            # I n n: Ŵ_i · W_j
        sq = dots * dots
        total = sq.sum(axis=2)                                     # includes j = i
        interference = total - sq.diagonal(0, 1, 2)
    else:                                                          # Σ_j (Ŵ_i·W_j)² = Ŵ_iᵀ (W Wᵀ) Ŵ_i
        total = (W_hat * ((W @ W.swapaxes(1, 2)) @ W_hat)).sum(axis=1)
        own = (W_hat * W).sum(axis=1)
        interference = total - own * own
        interference = where(interference > 0, interference, 0.0)
    dimensionality = where(learned, norm * norm / where(total > 1e-30, total, 1e-30), 0.0)
    frob = (W * W).sum(axis=(1, 2))
    d_star = W.shape[1] / where(frob > 1e-30, frob, 1e-30)
    out = {"norm": norm, "interference": interference, "dimensionality": dimensionality,
           "frob": frob, "d_star": d_star}
    return {k: v[0] for k, v in out.items()} if single else out
