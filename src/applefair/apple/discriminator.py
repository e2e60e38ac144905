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

from applefair.metrics.leakage import POOLS, pool_latent


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
        return self.mlp(torch.cat([pool_latent(f, self.pooling, fixed_width=True) for f in fs], 1))
