"""A faithful copy of the training loop of the paper's companion notebook, for comparison.

One einsum model over an instances axis, two ``torch.rand`` draws per element, autograd and
``torch.optim.AdamW`` (lr 1e-3, constant), batch laid out [batch, instances, features].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class NotebookModel(nn.Module):
    def __init__(self, n_instances: int, n_features: int, n_hidden: int, feature_probability: float,
                 importance: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(torch.empty((n_instances, n_features, n_hidden)))
        nn.init.xavier_normal_(self.W)
        self.b_final = nn.Parameter(torch.zeros((n_instances, n_features)))
        self.feature_probability = torch.full((n_instances, n_features), feature_probability)
        self.importance = importance

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("...if,ifh->...ih", features, self.W)
        out = torch.einsum("...ih,ifh->...if", hidden, self.W)
        return F.relu(out + self.b_final)

    def generate_batch(self, n_batch: int) -> torch.Tensor:
        shape = (n_batch, self.W.shape[0], self.W.shape[1])
        feat = torch.rand(shape)
        return torch.where(torch.rand(shape) <= self.feature_probability, feat, torch.zeros(()))


def optimize(model: NotebookModel, n_batch: int = 1024, steps: int = 10_000, lr: float = 1e-3) -> float:
    """The notebook's loop; returns the final summed loss."""
    opt = torch.optim.AdamW(list(model.parameters()), lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        batch = model.generate_batch(n_batch)
        out = model(batch)
        error = model.importance * (batch.abs() - out) ** 2
        loss = error.mean(dim=(0, 2)).sum()
        loss.backward()
        opt.step()
    return float(loss.detach())
