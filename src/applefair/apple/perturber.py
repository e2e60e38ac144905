"""The perturber G_p: a small U-shaped network on the latent, zero-initialised output.

As described for APPLE: 3 downsampling conv stages (width, 2*width, 4*width channels),
4 residual blocks, 3 upsampling stages back to the latent's channel count. Its last
layer starts at zero, so f_p = f_o + G_p(f_o) equals f_o before training: attaching a
fresh perturber never changes the deployed model's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_block(channels, channels),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Perturber(nn.Module):
    """G_p for a (B, C, H, W) latent with C = `channels`; any H, W (padded to a multiple of 8)."""

    def __init__(self, channels: int, width: int = 32, num_res_blocks: int = 4):
        super().__init__()
        w = (width, 2 * width, 4 * width)
        self.down = nn.Sequential(_conv_block(channels, w[0], 2), _conv_block(w[0], w[1], 2),
                                  _conv_block(w[1], w[2], 2))
        self.res = nn.Sequential(*[ResidualBlock(w[2]) for _ in range(num_res_blocks)])
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(w[2], w[1]),
                                nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(w[1], w[0]),
                                nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Conv2d(w[0], channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Returns the perturbation G_p(f) (same shape as f), not f + G_p(f)."""
        h, w = f.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        x = F.pad(f, (0, pw, 0, ph), mode="replicate") if (ph or pw) else f
        x = self.out(self.up(self.res(self.down(x))))
        return x[..., :h, :w]
