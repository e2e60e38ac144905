"""The discriminator D_p: predicts the group from a latent (global pooling + MLP)."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """Global average pooling, three Linear+BatchNorm+ReLU blocks, one logit per group."""

    def __init__(self, channels: int, num_groups: int, hidden: int = 128):
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"num_groups={num_groups}: a discriminator needs at least 2 groups")
        layers: list[nn.Module] = []
        cin = channels
        for _ in range(3):
            layers += [nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            cin = hidden
        layers.append(nn.Linear(hidden, num_groups))
        self.mlp = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        pooled = f.flatten(2).mean(-1) if f.dim() > 2 else f
        return self.mlp(pooled)
