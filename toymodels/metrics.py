"""Per-feature geometry of W: norm, interference, dimensionality; and D* for the whole model.

With W [instances, n_hidden, n_features], column W_i is feature i's direction, Ŵ_i = W_i/‖W_i‖:

- norm ‖W_i‖ (≈1 represented, ≈0 not);
- interference Σ_{j≠i} (Ŵ_i·W_j)² (0 when orthogonal to all others);
- dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², the sum including j = i
  (dedicated 1, antipodal pair 1/2, pentagon 2/5; 0 for columns with ‖W_i‖ below a threshold);
- ‖W‖_F² and D* = n_hidden / ‖W‖_F².
"""

from __future__ import annotations

import numpy as np
import torch

NORM_THRESHOLD = 1e-3
"""Columns with ‖W_i‖ below this count as not represented: D_i = 0, interference 0."""


def feature_metrics(W: torch.Tensor | np.ndarray, norm_threshold: float = NORM_THRESHOLD) -> dict:
    """Metrics of W [instances, n_hidden, n_features] (a single [n_hidden, n_features] also works).

    Returns tensors: norm, interference, dimensionality [instances, n_features];
    frob, d_star [instances]. Never NaN for finite W.
    """
    W = torch.as_tensor(W)
    single = W.dim() == 2
    if single:
        W = W.unsqueeze(0)
    W = W.to(torch.float64) if W.dtype == torch.float64 else W.to(torch.float32)
    norm = W.norm(dim=1)                                           # I n
    learned = norm > norm_threshold
    W_hat = W / torch.where(learned, norm, torch.ones_like(norm)).unsqueeze(1) * learned.unsqueeze(1)
    dots = torch.bmm(W_hat.transpose(1, 2), W)                     # I n n: Ŵ_i · W_j
    sq = dots * dots
    total = sq.sum(dim=2)                                          # includes j = i
    interference = total - torch.diagonal(sq, dim1=1, dim2=2)
    dimensionality = torch.where(learned, norm * norm / torch.clamp(total, min=1e-30), 0.0)
    frob = (W * W).sum(dim=(1, 2))
    d_star = W.shape[1] / torch.clamp(frob, min=1e-30)
    out = {"norm": norm, "interference": interference, "dimensionality": dimensionality,
           "frob": frob, "d_star": d_star}
    if single:
        out = {k: v[0] for k, v in out.items()}
    return out
