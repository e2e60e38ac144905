"""The spatial probe: a small conv net that reads the group from latent *maps*, not from their pooled statistics.

A decoder reads its inputs position by position, so a group cue can sit in *where* something is
(a bright patch at a fixed place, a border) while every per-channel mean and std is the same for all
groups: pooled probes cannot see it. The spatial probe sees the map (downsampled to at most 16 x 16
per axis, 8 for volumes) plus one coordinate channel per axis, so that a cue tied to a position is
readable (a plain conv net with global pooling is blind to position away from the border).

Architecture and budget are fixed, so that AUCs are comparable between sites, models and runs:
1x1 conv (C + coordinates -> 16), two 3x3 conv + ReLU layers (the first of stride 2), global average and
max pooling, a linear layer; Adam (lr 1e-2, weight decay 1e-3), 10 epochs of batches of 32, inputs
standardised per channel on the training fold; seeded; out-of-fold predictions over the same stratified
folds as the pooled probes. About 1-2 CPU seconds per site for 120 test images, 3-6 for 360 (docs/metrics.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

MAX_SIZE = 16  # per spatial axis of a 2-D map (volumes: 8 per axis)
WIDTH = 16
EPOCHS = 10
BATCH = 32
LR = 1e-2
WEIGHT_DECAY = 1e-3


def _grid(f: torch.Tensor) -> torch.Tensor:
    """Any latent as (B, C, *spatial): maps as they are, tokens (B, N, C) on their square grid (a leading
    class token dropped when N = s*s + 1; a line (N, 1) otherwise), a vector (B, C) as a 1 x 1 map."""
    if f.ndim == 2:
        return f[:, :, None, None]
    if f.ndim != 3:
        return f
    n = f.shape[1]
    side = int(round(n ** 0.5))
    tokens = f.transpose(1, 2)
    if side * side == n:
        return tokens.reshape(f.shape[0], f.shape[2], side, side)
    side = int(round((n - 1) ** 0.5))
    if side * side == n - 1:
        return tokens[:, :, 1:].reshape(f.shape[0], f.shape[2], side, side)
    return tokens[..., None]


def spatial_maps(f: torch.Tensor, max_size: int | None = None) -> torch.Tensor:
    """(B, C, h, w) float16 maps of a latent, average-pooled to at most `max_size` per axis: what the spatial
    probe reads. float16 halves the memory of keeping every test image's maps (docs/metrics.md measures it);
    a batch with values beyond float16's range stays float32 rather than overflow to infinity."""
    g = _grid(f.detach().float())
    limit = max_size or (MAX_SIZE if g.ndim == 4 else MAX_SIZE // 2)
    size = tuple(min(int(s), limit) for s in g.shape[2:])
    if tuple(g.shape[2:]) != size:
        pool = F.adaptive_avg_pool2d if g.ndim == 4 else F.adaptive_avg_pool3d
        g = pool(g, size)
    return g.to(torch.float16) if bool(g.abs().max() < torch.finfo(torch.float16).max) else g


class SpatialProbe(nn.Module):
    """1x1 conv to `width`, two 3x3 conv + ReLU layers (the first with stride 2), global average + max pooling,
    one linear layer."""

    def __init__(self, channels: int, classes: int, dims: int = 2, width: int = WIDTH):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.reduce = conv(channels + dims, width, 1)
        self.conv1 = conv(width, width, 3, padding=1, stride=2)  # half the positions: the probe's cost
        self.conv2 = conv(width, width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    @staticmethod
    def with_coordinates(x: torch.Tensor) -> torch.Tensor:
        axes = [torch.linspace(-1.0, 1.0, s, dtype=x.dtype) for s in x.shape[2:]]
        grids = torch.meshgrid(*axes, indexing="ij")
        coords = torch.stack(grids).unsqueeze(0).expand(x.shape[0], -1, *x.shape[2:])
        return torch.cat([x, coords], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(self.with_coordinates(x))
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        flat = h.flatten(2)
        return self.head(torch.cat([flat.mean(-1), flat.amax(-1)], 1))


def fit_predict(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, classes: int,
                seed: int = 0) -> np.ndarray:
    """Fit a fresh spatial probe on one fold (fixed budget, seeded) and return its class probabilities
    on the held-out maps."""
    x = train_x.float()
    axes = [0, *range(2, x.ndim)]
    mu, sd = x.mean(axes, keepdim=True), x.std(axes, keepdim=True).clamp_min(1e-6)
    x, xt = torch.nan_to_num((x - mu) / sd), torch.nan_to_num((test_x.float() - mu) / sd)
    y = torch.as_tensor(train_y, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = SpatialProbe(x.shape[1], classes, dims=x.ndim - 2)
        opt = torch.optim.Adam(probe.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        gen = torch.Generator().manual_seed(seed)
        probe.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), BATCH):
                idx = order[start:start + BATCH]
                loss = F.cross_entropy(probe(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        probe.eval()
        with torch.no_grad():
            return torch.softmax(probe(xt), 1).double().numpy()


def out_of_fold_maps(maps: np.ndarray | torch.Tensor, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                     classes: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities of the spatial probe over the given folds (train, test index pairs)."""
    x = torch.as_tensor(np.asarray(maps)) if not torch.is_tensor(maps) else maps
    proba = np.zeros((len(y), classes))
    for k, (tr, te) in enumerate(splits):
        proba[te] = fit_predict(x[tr], y[tr], x[te], classes, seed=seed + k)
    return proba
