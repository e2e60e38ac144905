"""The perturber G_p: maps a latent f_o to a perturbation, f_p = f_o + G_p(f_o).

Two shapes:
- `Perturber` ("unet", as described for APPLE): 3 stride-2 conv stages (w, 2w, 4w channels),
  4 residual blocks, 3 upsampling stages back to the latent's channel count, with skips
  between matching resolutions. Its receptive field covers a whole small latent, so it can
  move image-level (global) cues, which a few 3x3 convs cannot.
- `ConvPerturber` ("conv"): two 3x3 convs; cheap, local.

Both zero-initialise their last layer, so a fresh perturber leaves the deployed model's
output unchanged. With `normalize`, each image's per-channel mean and spread are first brought
to the population's (AdaIN-style, `PopulationNorm`), which removes a group cue carried by a
latent's channel statistics without any learning; the learned residual then acts on the
normalised latent. The normalisation starts switched off (the patch is the identity) and is
switched on once the training split's population statistics have been gathered.

Both accept any spatial size (odd, 1x1: padded to a multiple of 8 per spatial axis and cropped
back), 2-D maps (B, C, H, W), 3-D maps (B, C, D, H, W) (`dims=3`: Conv3d and BatchNorm3d instead of
their 2-D twins, the same layout otherwise) and token latents (B, N, C) (laid out on a square grid
when N is a square, else on an N x 1 strip). An optional global branch (FiLM-style scale/shift from
pooled mean/std) lets either shape change per-image statistics directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("unet", "conv")
DIMS = (2, 3)


def conv_nd(dims: int) -> type[nn.Module]:
    """Conv2d for 2-D maps, Conv3d for 3-D maps."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_dims(dims)]


def batchnorm_nd(dims: int) -> type[nn.Module]:
    """BatchNorm2d for 2-D maps, BatchNorm3d for 3-D maps."""
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_check_dims(dims)]


def _check_dims(dims: int) -> int:
    if dims not in DIMS:
        raise ValueError(f"dims={dims}: expected 2 (images) or 3 (volumes)")
    return dims


def _conv_block(cin: int, cout: int, stride: int = 1, dims: int = 2) -> nn.Sequential:
    return nn.Sequential(conv_nd(dims)(cin, cout, 3, stride=stride, padding=1, bias=False),
                         batchnorm_nd(dims)(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, dims: int = 2):
        super().__init__()
        self.body = nn.Sequential(_conv_block(channels, channels, dims=dims),
                                  conv_nd(dims)(channels, channels, 3, padding=1, bias=False),
                                  batchnorm_nd(dims)(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def to_grid(f: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """(B, N, C) tokens -> (B, C, h, w); maps (B, C, H, W) and (B, C, D, H, W) pass through. Returns the
    undo info."""
    if f.dim() in (4, 5):
        return f, None
    if f.dim() != 3:
        raise ValueError(f"latent of shape {tuple(f.shape)}: expected (B, C, H, W), (B, C, D, H, W) or tokens "
                         "(B, N, C)")
    b, n, c = f.shape
    side = math.isqrt(n)
    h, w = (side, side) if side * side == n else (n, 1)
    return f.transpose(1, 2).reshape(b, c, h, w), (b, n, c)


def from_grid(x: torch.Tensor, undo: tuple | None) -> torch.Tensor:
    if undo is None:
        return x
    b, n, c = undo
    return x.reshape(b, c, n).transpose(1, 2)


def latent_channels(shape: torch.Size | tuple) -> int:
    """Channel count of a latent: dim 1 for (B, C, H, W) and (B, C, D, H, W), last dim for tokens (B, N, C)."""
    return int(shape[-1] if len(shape) == 3 else shape[1])


def latent_dims(shape: torch.Size | tuple) -> int:
    """Spatial dimensions a perturber or a spatial discriminator works in: 3 for (B, C, D, H, W), else 2
    (images, and tokens, which are laid on a 2-D grid)."""
    return 3 if len(shape) == 5 else 2


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, ...) and (C,) -> (C, 1, ...), broadcastable against the map `like`."""
    return t.reshape(*t.shape, *([1] * (like.dim() - 2)))


class GlobalBranch(nn.Module):
    """Per-image scale and shift of every channel from its pooled mean and std (zero-init)."""

    def __init__(self, channels: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        mu, sd = flat.mean(-1), flat.std(-1, unbiased=False)
        scale, shift = self.mlp(torch.cat([mu, sd], 1)).chunk(2, 1)
        return _per_channel(scale, x) * (x - _per_channel(mu, x)) + _per_channel(shift, x)


class PopulationNorm(nn.Module):
    """Per image, each channel's mean and std brought to the population's: (x - mu_i) / sigma_i * sigma + mu.

    The population's per-channel mean and std are gathered from the latents seen while `mix` is 0
    (`observe`), fixed by `finish()` (which also switches the normalisation on: `mix` = 1), and saved
    with the patch as buffers. While `mix` is 0 the module is the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        for name in ("mix", "count", "mean", "std", "sum_mean", "sum_std"):
            self.register_buffer(name, torch.zeros(() if name in ("mix", "count") else (channels,)))

    @staticmethod
    def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(-1), flat.std(-1, unbiased=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.mix) == 0.0:
            if self.training:
                mu, sd = self._stats(x.detach().float())
                self.sum_mean += mu.sum(0)
                self.sum_std += sd.sum(0)
                self.count += len(x)
            return x
        mu, sd = self._stats(x)
        scale = _per_channel(self.std / sd.clamp_min(1e-5), x)
        normed = (x - _per_channel(mu, x)) * scale + _per_channel(self.mean, x)
        return x + self.mix * (normed - x)

    @torch.no_grad()
    def finish(self, reduce=lambda t: t) -> None:
        """Fix the population statistics (`reduce` sums them over processes) and switch the normalisation on."""
        count = reduce(self.count.clone())
        if float(count) == 0:
            return
        self.mean.copy_(reduce(self.sum_mean.clone()) / count)
        self.std.copy_(reduce(self.sum_std.clone()) / count)
        self.mix.fill_(1.0)


class _Base(nn.Module):
    kind = ""

    def __init__(self, channels: int, width: int, global_branch: bool, normalize: bool = False, dims: int = 2):
        super().__init__()
        self.channels, self.width, self.dims = int(channels), int(width), _check_dims(int(dims))
        self.glob = GlobalBranch(channels) if global_branch else None
        self.norm = PopulationNorm(channels) if normalize else None

    def spec(self) -> dict:
        """What `build_perturber` needs to rebuild this perturber (stored in a patch header)."""
        spec = {"kind": self.kind, "channels": self.channels, "width": self.width,
                "global_branch": self.glob is not None, "normalize": self.norm is not None, **self._extra_spec()}
        return spec if self.dims == 2 else {**spec, "dims": self.dims}  # 2-D patch headers stay as they were

    def _extra_spec(self) -> dict:
        return {}

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Returns the perturbation f_p - f (same shape as f): G_p(f), or with `normalize`
        (norm(f) - f) + G_p(norm(f))."""
        x, undo = to_grid(f)
        n = self.norm(x) if self.norm is not None else x
        d = self._local(n)
        if self.glob is not None:
            d = d + self.glob(n)
        if self.norm is not None:
            d = d + (n - x)
        return from_grid(d, undo)


class Perturber(_Base):
    """The paper's U-shaped G_p for a latent with `channels` channels."""

    kind = "unet"

    def __init__(self, channels: int, width: int = 32, num_res_blocks: int = 4, global_branch: bool = False,
                 normalize: bool = False, dims: int = 2):
        super().__init__(channels, width, global_branch, normalize, dims)
        self.num_res_blocks = int(num_res_blocks)
        w, d = (width, 2 * width, 4 * width), self.dims
        self.d1, self.d2, self.d3 = _conv_block(channels, w[0], 2, d), _conv_block(w[0], w[1], 2, d), \
            _conv_block(w[1], w[2], 2, d)
        self.res = nn.Sequential(*[ResidualBlock(w[2], d) for _ in range(num_res_blocks)])
        self.u3, self.u2, self.u1 = _conv_block(w[2], w[1], dims=d), _conv_block(w[1], w[0], dims=d), \
            _conv_block(w[0], w[0], dims=d)
        self.out = conv_nd(d)(w[0], channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _extra_spec(self) -> dict:
        return {"num_res_blocks": self.num_res_blocks}

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pads = [(-n) % 8 for n in sizes]  # each spatial axis to a multiple of 8 (three stride-2 stages)
        if any(pads):
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)], mode="replicate")
        h1 = self.d1(x)
        h2 = self.d2(h1)
        h3 = self.res(self.d3(h2))
        up = self.u3(F.interpolate(h3, scale_factor=2, mode="nearest")) + h2
        up = self.u2(F.interpolate(up, scale_factor=2, mode="nearest")) + h1
        up = self.u1(F.interpolate(up, scale_factor=2, mode="nearest"))
        return self.out(up)[(..., *(slice(0, n) for n in sizes))]


class ConvPerturber(_Base):
    """A small local G_p: 3x3 conv (width channels), ReLU, zero-initialised 3x3 conv."""

    kind = "conv"

    def __init__(self, channels: int, width: int = 32, global_branch: bool = False, normalize: bool = False,
                 dims: int = 2):
        super().__init__(channels, width, global_branch, normalize, dims)
        conv = conv_nd(self.dims)
        self.body = nn.Sequential(conv(channels, width, 3, padding=1), nn.ReLU(inplace=True))
        self.out = conv(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def build_perturber(spec: dict) -> nn.Module:
    """A fresh perturber from a spec dict (`kind`, `channels`, `width`, ...; `dims` 3 for volumes)."""
    spec = dict(spec)
    kind = spec.pop("kind", "unet")
    if kind == "unet":
        return Perturber(**spec)
    if kind == "conv":
        spec.pop("num_res_blocks", None)
        return ConvPerturber(**spec)
    raise ValueError(f"perturber kind '{kind}' is not known (expected one of: {', '.join(KINDS)})")
