"""The paper's four models, each with an instances axis, and their hand-derived gradients.

Public shapes (TransformerLens vocabulary):
    W  [instances, n_hidden, n_features]   (W1 for ``abs``)
    W2 [instances, n_features, n_hidden]   (``abs`` only)
    b  [instances, n_features]
    x  [instances, batch, n_features]

| kind        | hidden h          | output x'                 | target |
|-------------|-------------------|---------------------------|--------|
| linear      | W x               | Wᵀh + b                   | x      |
| relu_out    | W x               | ReLU(Wᵀh + b)             | x      |
| relu_hidden | ReLU(W x)         | ReLU(Wᵀh + b)             | x      |
| abs         | ReLU(W1 x)        | ReLU(W2 h + b)            | |x|    |

Loss per instance: mean over batch and features of I_i (target_i − x'_i)², plus an optional
λ·mean_batch ‖h‖₁. :func:`forward` is the readable autograd reference; :func:`loss_and_grads`
is what the trainer runs, on feature-major batches, without autograd.
"""

from __future__ import annotations

import torch

def forward(kind: str, W: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
            W2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction x' [instances, batch, n_features] and hidden h [instances, batch, n_hidden]."""
    pre = torch.einsum("ibn,imn->ibm", x, W)
    h = pre if kind in ("linear", "relu_out") else torch.relu(pre)
    if kind == "abs":
        out = torch.einsum("ibm,inm->ibn", h, W2) + b[:, None, :]
    else:
        out = torch.einsum("ibm,imn->ibn", h, W) + b[:, None, :]
    return (out if kind == "linear" else torch.relu(out)), h


def target(kind: str, x: torch.Tensor) -> torch.Tensor:
    """What the model must reproduce: x, or |x| for the ``abs`` task."""
    return x.abs() if kind == "abs" else x


def loss(kind: str, W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, importance: torch.Tensor,
         W2: torch.Tensor | None = None, l1_penalty: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-instance loss [instances]; importance is [instances, n_features]."""
    x_hat, h = forward(kind, W, b, x, W2)
    rec = (importance[:, None, :] * (target(kind, x) - x_hat) ** 2).mean(dim=(1, 2))
    l1 = torch.as_tensor(l1_penalty, dtype=x.dtype, device=x.device).reshape(-1)
    return rec + l1 * h.abs().sum(-1).mean(-1)


def loss_and_grads(kind: str, params: tuple[torch.Tensor, ...], X: torch.Tensor,
                   importance: torch.Tensor, l1: torch.Tensor | None = None,
                   need_grads: bool = True):
    """Reconstruction loss [instances] and the gradients of the full objective.

    params: (W, b) for tied kinds, (W1, W2, b) for ``abs``, with b shaped [I, n, 1].
    X: feature-major batch [I, n, B]; importance [I, n, 1]; l1: [I, 1, 1] or None.
    Returns (loss, grads) with grads shaped like params (None when ``need_grads`` is False).
    """
    n, B = X.shape[1], X.shape[2]
    if kind == "abs":
        W1, W2, b = params
        pre = torch.bmm(W1, X)                                   # I m B
        h = torch.relu(pre)
        out = torch.bmm(W2, h) + b                               # I n B
        diff = torch.relu(out) - X.abs()
    else:
        W, b = params
        pre = torch.bmm(W, X)                                    # I m B
        h = pre if kind in ("linear", "relu_out") else torch.relu(pre)
        out = torch.bmm(W.transpose(1, 2), h) + b                # I n B
        diff = (out if kind == "linear" else torch.relu(out)) - X
    loss = (importance * diff * diff).mean(dim=(1, 2))
    if not need_grads:
        return loss, None
    dout = (2.0 / (B * n)) * importance * diff
    if kind != "linear":
        dout = dout * (out > 0)
    gb = dout.sum(dim=2, keepdim=True)
    if kind == "abs":
        gW2 = torch.bmm(dout, h.transpose(1, 2))                 # I n m
        dh = torch.bmm(W2.transpose(1, 2), dout)                 # I m B
    else:
        gW_out = torch.bmm(h, dout.transpose(1, 2))              # I m n
        dh = torch.bmm(W, dout)                                  # I m B
    if l1 is not None:
        sign = torch.sign(pre) if kind in ("linear", "relu_out") else (pre > 0).to(pre.dtype)
        dh = dh + (l1 / B) * sign
    if kind in ("relu_hidden", "abs"):
        dh = dh * (pre > 0)
    gW_in = torch.bmm(dh, X.transpose(1, 2))                     # I m n
    if kind == "abs":
        return loss, (gW_in, gW2, gb)
    return loss, (gW_out + gW_in, gb)
