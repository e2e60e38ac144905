"""The discriminator D_p: predicts the group from the latent(s) the decoder receives.

Two kinds. `Discriminator` ("pooled"): global pooling of every latent it reads (per-channel mean,
and std by default: the fresh probe that judges leakage reads both, so a discriminator that saw
only means would let the perturber hide the group in the spread), concatenated over sites, then
three Linear+BatchNorm+ReLU blocks and one logit per group. `SpatialDiscriminator` ("spatial"):
two convolutions per latent before pooling, so that it can read a cue with a place (a marker, a
texture) that per-channel statistics hide. Regularisers that keep it from winning the game
outright: dropout, spectral norm on the Linear layers, and (in the loss) label smoothing.
`build_discriminators` makes an ensemble of either kind: the perturber then has to fool every
member, and cannot just move the group into a direction one discriminator happens to ignore.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from applefair.metrics.leakage import POOLS, pool_latent

KINDS = ("pooled", "spatial")


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


class SpatialDiscriminator(nn.Module):
    """D_p with a small convolutional stem per latent: conv 3x3 (h), conv 3x3 stride 2 (h), global mean,
    then the pooled discriminator's MLP over the concatenated stems. Token latents are laid on their grid;
    `dims=3` reads 3-D maps (B, C, D, H, W) with 3x3x3 convolutions."""

    def __init__(self, channels: int | Sequence[int], num_groups: int, hidden: int = 128, dropout: float = 0.0,
                 spectral_norm: bool = False, width: int = 32, dims: int = 2):
        from applefair.apple.perturber import batchnorm_nd, conv_nd

        super().__init__()
        if num_groups < 2:
            raise ValueError(f"num_groups={num_groups}: a discriminator needs at least 2 groups")
        chans = [channels] if isinstance(channels, int) else list(channels)
        conv, norm = conv_nd(dims), batchnorm_nd(dims)
        self.stems = nn.ModuleList(
            nn.Sequential(conv(c, width, 3, padding=1, bias=False), norm(width), nn.ReLU(inplace=True),
                          conv(width, width, 3, stride=2, padding=1, bias=False), norm(width),
                          nn.ReLU(inplace=True)) for c in chans)
        self.head = Discriminator(width * len(chans), num_groups, hidden=hidden, dropout=dropout,
                                  spectral_norm=spectral_norm, pooling="mean")

    def forward(self, latents: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        from applefair.apple.perturber import to_grid

        fs = [latents] if torch.is_tensor(latents) else list(latents)
        maps = [_spatial_mean(stem(to_grid(f)[0])) for stem, f in zip(self.stems, fs, strict=True)]
        return self.head(torch.cat(maps, 1))


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B, C): the mean over every spatial axis."""
    return x.mean(tuple(range(2, x.dim())))


def build_discriminators(kind: str, channels: Sequence[int], num_groups: int, count: int = 1, dims: int = 2,
                         **kw) -> nn.ModuleList:
    """`count` fresh discriminators of `kind` ('pooled' or 'spatial') over latents with `channels` channels;
    `dims` (2 or 3) is the latents' spatial dimensions, which only the spatial kind's convolutions need."""
    if kind not in KINDS:
        raise ValueError(f"discriminator kind '{kind}' is not known (expected one of: {', '.join(KINDS)})")
    if kind == "spatial":
        kw.pop("pooling", None)
        return nn.ModuleList(SpatialDiscriminator(list(channels), num_groups, dims=dims, **kw) for _ in range(count))
    return nn.ModuleList(Discriminator(list(channels), num_groups, **kw) for _ in range(count))


def reset(module: nn.Module) -> None:
    """Fresh weights for every layer of `module` that has them (a re-initialised discriminator)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
