"""Prompts for SAM-like segmentors, derived from the ground-truth mask as MedSAM and FairMedFM do.

A prompt depends only on (mask, sample index, seed, config): the same sample gets the same box
or point before and after mitigation, in every evaluator, whatever the batch it falls in.

- box: the mask's bounding box (x0, y0, x1, y1; inclusive pixel coordinates), each side moved
  outwards by a random 0..jitter pixels (MedSAM's training protocol); an empty mask gets the
  whole image.
- point: the foreground pixel farthest from the background (ties: the one nearest the mask's
  centroid, then the first in row-major order);
  with jitter > 0, a random foreground pixel within `jitter` pixels (Chebyshev) of it. An empty
  mask gets SAM's "not a point" label (-1), i.e. no prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from applefair.errors import InputError

MODES = ("box", "point")


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are derived: `mode` box or point, `jitter` in pixels, `seed` for the jitter."""

    mode: str = "box"
    jitter: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"prompt mode '{self.mode}' is not known (expected one of: {', '.join(MODES)})")
        if int(self.jitter) < 0:
            raise InputError(f"prompt jitter {self.jitter}: expected a non-negative number of pixels")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF])


def box_from_mask(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> np.ndarray:
    """(x0, y0, x1, y1) of the foreground of a 2-D mask, widened by 0..jitter px per side."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask > 0)
    if len(ys) == 0:
        return np.array([0, 0, w - 1, h - 1], dtype=np.float32)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.int64)
    if jitter > 0:
        shift = rng.integers(0, int(jitter) + 1, size=4)
        box = box + np.array([-1, -1, 1, 1]) * shift
    box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    return box.astype(np.float32)


def point_from_mask(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """((x, y), label) of an interior foreground point; label -1 (no point) for an empty mask."""
    fg = mask > 0
    if not fg.any():
        return np.zeros(2, dtype=np.float32), -1
    dist = ndimage.distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= dist.max() - 1e-6)  # deepest pixels; ties -> nearest the centroid
    fy, fx = np.nonzero(fg)
    j = int(np.argmin((ys - fy.mean()) ** 2 + (xs - fx.mean()) ** 2))
    cy, cx = ys[j], xs[j]
    if jitter > 0:
        ys, xs = np.nonzero(fg)
        near = (np.abs(ys - cy) <= jitter) & (np.abs(xs - cx) <= jitter)
        j = int(rng.integers(0, int(near.sum())))
        cy, cx = ys[near][j], xs[near][j]
    return np.array([cx, cy], dtype=np.float32), 1


def derive_prompts(mask: torch.Tensor, index, cfg: PromptConfig) -> dict[str, torch.Tensor]:
    """Prompts for a batch of masks (B, 1, H, W) with sample indices `index` (B,).

    Returns {"boxes": (B, 4)} or {"points": (B, 1, 2), "labels": (B, 1)}, in input-pixel coordinates.
    """
    masks = mask.detach().cpu().numpy().reshape(mask.shape[0], *mask.shape[-2:])
    idx = [int(i) for i in (index.tolist() if torch.is_tensor(index) else index)]
    if len(idx) != len(masks):
        raise ValueError(f"{len(idx)} sample indices for {len(masks)} masks")
    if cfg.mode == "box":
        boxes = [box_from_mask(m, cfg.jitter, _rng(cfg.seed, i)) for m, i in zip(masks, idx, strict=True)]
        return {"boxes": torch.from_numpy(np.stack(boxes))}
    pts = [point_from_mask(m, cfg.jitter, _rng(cfg.seed, i)) for m, i in zip(masks, idx, strict=True)]
    return {"points": torch.from_numpy(np.stack([p for p, _ in pts]))[:, None, :],
            "labels": torch.tensor([[lab] for _, lab in pts], dtype=torch.int64)}


class PromptedModule(nn.Module):
    """A segmentor that needs prompts besides the image.

    `applefair.models.segment(net, batch)` finds every PromptedModule inside `net` (also inside
    wrappers such as PatchedSegmentor or DDP), hands it the batch for one forward pass, and takes
    it back afterwards; so wrappers keep their `forward(x)` signature. A forward pass without a
    batch (e.g. a shape probe) uses `default_prompts`.
    """

    prompt: PromptConfig | None = None

    def __init__(self) -> None:
        super().__init__()
        self._batch_prompts: dict[str, torch.Tensor] | None = None

    def set_batch(self, batch: dict | None) -> None:
        """Derive (or take explicit `boxes`/`points`+`labels` from) the batch; None clears."""
        if batch is None or self.prompt is None:
            self._batch_prompts = None
            return
        if "boxes" in batch or "points" in batch:
            self._batch_prompts = {k: batch[k] for k in ("boxes", "points", "labels") if k in batch}
            return
        if "mask" not in batch:
            self._batch_prompts = None
            return
        n = batch["mask"].shape[0]
        index = batch.get("index", list(range(n)))
        self._batch_prompts = derive_prompts(batch["mask"], index, self.prompt)

    def current_prompts(self, n: int, height: int, width: int) -> dict[str, torch.Tensor] | None:
        """The prompts for this forward pass (None: the model takes no prompt)."""
        if self.prompt is None:
            return None
        if self._batch_prompts is not None:
            return self._batch_prompts
        return self.default_prompts(n, height, width)

    def default_prompts(self, n: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """Without a mask: the whole image as box (or no point)."""
        if self.prompt is not None and self.prompt.mode == "point":
            return {"points": torch.zeros(n, 1, 2), "labels": -torch.ones(n, 1, dtype=torch.int64)}
        return {"boxes": torch.tensor([[0.0, 0.0, width - 1.0, height - 1.0]]).repeat(n, 1)}
