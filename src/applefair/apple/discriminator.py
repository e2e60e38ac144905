"""The discriminator D_p: predicts the group from the latent(s) the decoder receives.

Global pooling of every perturbed latent (per-channel mean, and std by default: the fresh
probe that judges leakage reads both, so a discriminator that saw only means would let the
perturber hide the group in the spread), concatenated over sites, then three
Linear+BatchNorm+ReLU blocks and one logit per group. Regularisers that keep it from winning
the game outright: dropout, spectral norm on the Linear layers, and (in the loss) label smoothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

POOLS = ("mean", "meanstd")


def pool(f: torch.Tensor, how: str = "meanstd") -> torch.Tensor:
    """(B, C, H, W) or tokens (B, N, C) or (B, C) -> (B, C) or (B, 2C) pooled statistics."""
    if f.dim() == 2:
        return f if how == "mean" else torch.cat([f, torch.zeros_like(f)], 1)
    flat = f.transpose(1, 2) if f.dim() == 3 else f.flatten(2)  # (B, C, positions)
    mu = flat.mean(-1)
    if how == "mean":
        return mu
    return torch.cat([mu, flat.std(-1, unbiased=False)], 1)


class Discriminator(nn.Module):
    """D_p over one or several latents. `channels`: the channel count of each site's latent."""

    def __init__(self, channels: int | Sequence[int], num_groups: int, hidden: int = 128,
                 dropout: float = 0.0, spectral_norm: bool = False, pooling: str = "meanstd"):
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"num_groups={num_groups}: a discriminator needs at least 2 groups")
        if pooling not in POOLS:
            raise ValueError(f"pooling '{pooling}' is not known (expected one of: {', '.join(POOLS)})")
        chans = [channels] if isinstance(channels, int) else list(channels)
        self.pooling = pooling
        cin = sum(chans) * (2 if pooling == "meanstd" else 1)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [nn.BatchNorm1d(cin, affine=False)]  # pooled stats differ in scale per site
        for _ in range(3):
            layers += [sn(nn.Linear(cin, hidden)), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            cin = hidden
        layers.append(sn(nn.Linear(hidden, num_groups)))
        self.mlp = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        fs = [latents] if torch.is_tensor(latents) else list(latents)
        return self.mlp(torch.cat([pool(f, self.pooling) for f in fs], 1))
