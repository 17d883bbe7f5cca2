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

Objective per instance: the reconstruction loss, mean over batch and features of
I_i (target_i − x'_i)², plus the L1 penalty (λ/n)·mean_batch ‖h‖₁ — the paper's per-example
Σ_i I_i (target_i − x'_i)² + λ‖h‖₁ divided by n, so the paper's λ can be used as it is.
:func:`forward` is the readable autograd reference; :func:`loss_and_grads` is what the trainer
runs, on feature-major batches, without autograd.
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
    """Per-instance objective [instances]: reconstruction + (λ/n)·mean_batch ‖h‖₁.

    importance is [instances, n_features]; l1_penalty is λ, a scalar or [instances].
    """
    x_hat, h = forward(kind, W, b, x, W2)
    rec = (importance[:, None, :] * (target(kind, x) - x_hat) ** 2).mean(dim=(1, 2))
    l1 = torch.as_tensor(l1_penalty, dtype=x.dtype, device=x.device).reshape(-1)
    return rec + (l1 / x.shape[-1]) * h.abs().sum(-1).mean(-1)


def hidden(kind: str, W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Hidden activations h [I, m, B] of a feature-major batch X [I, n, B] (W is W1 for ``abs``)."""
    pre = torch.bmm(W, X)
    return pre if kind in ("linear", "relu_out") else torch.relu(pre)


def _forward_fm(kind: str, params: tuple[torch.Tensor, ...], X: torch.Tensor):
    """Feature-major forward pass: (pre [I, m, B], h [I, m, B], out [I, n, B], diff [I, n, B])."""
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
    return pre, h, out, diff


def row_objective(kind: str, params: tuple[torch.Tensor, ...], X: torch.Tensor, importance: torch.Tensor,
                  l1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's two parts for every row: (reconstruction [I, B], penalty [I, B]).

    Same arguments as :func:`loss_and_grads`; their means over B are its values.
    """
    n = X.shape[1]
    _, h, _, diff = _forward_fm(kind, params, X)
    rec = (importance * diff * diff).mean(dim=1)
    penalty = torch.zeros_like(rec) if l1 is None else (l1.view(-1, 1) / n) * h.abs().sum(dim=1)
    return rec, penalty


def loss_and_grads(kind: str, params: tuple[torch.Tensor, ...], X: torch.Tensor,
                   importance: torch.Tensor, l1: torch.Tensor | None = None,
                   need_grads: bool = True):
    """The objective's two parts and the gradients of their sum.

    params: (W, b) for tied kinds, (W1, W2, b) for ``abs``, with b shaped [I, n, 1].
    X: feature-major batch [I, n, B]; importance [I, n, 1]; l1: λ as [I, 1, 1], or None for none.
    Returns (reconstruction [I], penalty [I], grads), grads shaped like params (None when
    ``need_grads`` is False); the penalty is zeros when ``l1`` is None.
    """
    n, B = X.shape[1], X.shape[2]
    pre, h, out, diff = _forward_fm(kind, params, X)
    rec = (importance * diff * diff).mean(dim=(1, 2))
    if l1 is None:
        penalty = torch.zeros_like(rec)
    else:
        penalty = (l1.view(-1) / n) * h.abs().sum(dim=1).mean(dim=1)
    if not need_grads:
        return rec, penalty, None
    dout = (2.0 / (B * n)) * importance * diff
    if kind != "linear":
        dout = dout * (out > 0)
    gb = dout.sum(dim=2, keepdim=True)
    if kind == "abs":
        gW2 = torch.bmm(dout, h.transpose(1, 2))                 # I n m
        dh = torch.bmm(params[1].transpose(1, 2), dout)          # I m B
    else:
        gW_out = torch.bmm(h, dout.transpose(1, 2))              # I m n
        dh = torch.bmm(params[0], dout)                          # I m B
    if l1 is not None:
        sign = torch.sign(pre) if kind in ("linear", "relu_out") else (pre > 0).to(pre.dtype)
        dh = dh + (l1 / (B * n)) * sign
    if kind in ("relu_hidden", "abs"):
        dh = dh * (pre > 0)
    gW_in = torch.bmm(dh, X.transpose(1, 2))                     # I m n
    if kind == "abs":
        return rec, penalty, (gW_in, gW2, gb)
    return rec, penalty, (gW_out + gW_in, gb)
