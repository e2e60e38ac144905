"""Sliding-window inference: volumes larger than a model's patch, through MONAI's `sliding_window_inference`.

`SlidingWindow` is a mixin for a network class (``class SlidingUNet(SlidingWindow, UNet)``): its
`forward` is the network's own forward on the whole input, or, in eval mode and when the input is
larger than `roi_size` along some axis, the network's forward on overlapping windows of `roi_size`
blended by MONAI (Gaussian weights, `overlap` of each window). The module tree and state dict are the
network's own, so latent sites keep their paths and `segment(model, batch)` stays the one forward call.

What a forward hook at a latent site sees: one call per batch of windows (up to `sw_batch_size`
windows, ordered by sample), not one call per batch of samples. A perturber's hook perturbs every
window, as it must. Whoever pools a site's output per sample (the evaluation's leakage capture) asks
`windows_per_sample(model)` after the forward and merges each sample's consecutive windows
(`merge_window_rows`). Training never slides: a module in train mode runs the whole input, and a
frozen model inside APPLE's game (eval mode) refuses inputs larger than its patch, since the game needs
one latent per sample (`applefair.apple.patch`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SlidingWindow:
    """Mixin: whole-input forward, or MONAI sliding windows in eval mode for inputs larger than `roi_size`.

    Call `configure_windows` in the network's constructor. `windows` is the number of windows per sample of
    the latest forward (1 without sliding)."""

    roi_size: tuple[int, ...] | None = None
    sw_batch_size: int = 4
    overlap: float = 0.5
    blend: str = "gaussian"
    windows: int = 1

    def configure_windows(self, roi_size: int | Sequence[int] | None, spatial_dims: int, sw_batch_size: int = 4,
                          overlap: float = 0.5, blend: str = "gaussian") -> None:
        """`roi_size`: the patch (one number for a cube, or one per axis; None: never slide)."""
        from applefair.errors import InputError

        if roi_size is None:
            self.roi_size = None
        else:
            roi = [int(roi_size)] * spatial_dims if isinstance(roi_size, int) else [int(r) for r in roi_size]
            if len(roi) != spatial_dims or min(roi) < 1:
                raise InputError(f"roi_size {roi_size}: expected one positive number or {spatial_dims} (one per axis)")
            self.roi_size = tuple(roi)
        if not 0 <= float(overlap) < 1:
            raise InputError(f"overlap {overlap}: expected a fraction in [0, 1)")
        if blend not in ("gaussian", "constant"):
            raise InputError(f"blend '{blend}': expected gaussian or constant")
        if int(sw_batch_size) < 1:
            raise InputError(f"sw_batch_size {sw_batch_size}: expected at least 1")
        self.sw_batch_size, self.overlap, self.blend = int(sw_batch_size), float(overlap), blend

    def slides(self, x: torch.Tensor) -> bool:
        """Whether a forward of `x` runs in windows: eval mode, and larger than the patch along some axis."""
        return (self.roi_size is not None and not self.training
                and any(s > r for s, r in zip(x.shape[2:], self.roi_size, strict=True)))

    def whole(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own forward on the whole input."""
        return super().forward(x)  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.slides(x):
            self.windows = 1
            return self.whole(x)
        from monai.inferers import sliding_window_inference

        seen = [0]

        def predictor(window: torch.Tensor) -> torch.Tensor:
            seen[0] += len(window)
            return self.whole(window)

        out = sliding_window_inference(x, self.roi_size, self.sw_batch_size, predictor, overlap=self.overlap,
                                       mode=self.blend)
        self.windows = seen[0] // len(x)
        return out


def windowed_modules(model: nn.Module) -> list[SlidingWindow]:
    """The sliding-window networks inside `model` (itself, or inside a wrapper such as a patched model)."""
    return [m for m in model.modules() if isinstance(m, SlidingWindow)]


def windows_per_sample(model: nn.Module) -> int:
    """Windows per sample in `model`'s latest forward: 1 unless a network inside it slid."""
    return max((m.windows for m in windowed_modules(model)), default=1)


def require_whole(model: nn.Module, sample_shape: Sequence[int], who: str) -> None:
    """InputError when a frozen `model` would slide windows over a sample of `sample_shape` ((C, *spatial)):
    `who` (a method that reads the latent of each sample, as APPLE's game) needs one latent per sample."""
    from applefair.errors import InputError

    spatial = tuple(int(s) for s in sample_shape[1:])
    for m in windowed_modules(model):
        if m.roi_size is not None and any(s > r for s, r in zip(spatial, m.roi_size, strict=True)):
            raise InputError(f"{who} trains on whole samples, but a sample of size {'x'.join(map(str, spatial))} is "
                             f"larger than the model's roi_size {'x'.join(map(str, m.roi_size))} (it would be "
                             "predicted in sliding windows); resize the volumes (--size) or build the model with a "
                             "roi_size at least as large")


def merge_window_rows(rows: torch.Tensor, windows: int) -> torch.Tensor:
    """Per-window pooled rows (N * windows, 2C: per-channel mean, then std) -> one row per sample (N, 2C).

    A sample's windows are consecutive (MONAI orders windows by sample) and of equal size, so each sample's
    row is the mean and the (population) std over every position of every window: means averaged, std
    from the averaged second moments. Positions in the overlap of two windows count once per window."""
    if windows == 1:
        return rows
    n, width = len(rows) // windows, rows.shape[1]
    if n * windows != len(rows) or width % 2:
        raise ValueError(f"{len(rows)} pooled rows of width {width} do not split into {windows} windows per sample")
    mu, sd = rows.reshape(n, windows, width).split(width // 2, dim=2)
    mean = mu.mean(1)
    second = (sd.pow(2) + mu.pow(2)).mean(1)
    return torch.cat([mean, (second - mean.pow(2)).clamp_min(0).sqrt()], 1)
