"""3-D samples: NIfTI volumes read whole, with their voxel spacing.

A manifest row whose image is a ``.nii``/``.nii.gz`` file and which names no ``slice`` is one 3-D
sample (a CSV manifest, `read_nifti(..., volumes=True)`, the ``nodules3d`` benchmark). Its arrays keep
the axes as stored (i, j, k; no reorientation), become (1, D, H, W) tensors, and its voxel spacing
(the header's zooms, in mm for clinical data) travels with it, so that distances (HD95, NSD) can be
measured in physical units. Image and mask must agree in shape and spacing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from applefair.data.loaders import LoadOptions, binarise, normalise, read_volume
from applefair.errors import InputError

SPACING_RTOL = 1e-3  # image and mask spacings closer than this (relative) count as the same


def load_volume(row, opts: LoadOptions) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image in [0, 1], binary mask, spacing) of one 3-D manifest row; shapes and spacings must agree."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    ipath, mpath = str(get("image_path")), str(get("mask_path"))
    raw_img, spacing = read_volume(ipath)
    raw_msk, mask_spacing = read_volume(mpath)
    if raw_img.shape != raw_msk.shape:
        raise InputError(f"{ipath}: image shape {raw_img.shape} differs from mask shape {raw_msk.shape} ({mpath})")
    if not np.allclose(spacing, mask_spacing, rtol=SPACING_RTOL):
        raise InputError(f"{ipath}: voxel spacing {spacing} differs from the mask's {mask_spacing} ({mpath})")
    return normalise(raw_img, opts, ipath, volume=True), binarise(raw_msk, opts, mpath, volume=True), spacing


def volume_size(size: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    """`size` of a 3-D resize as (D, H, W): one number for a cube, or three."""
    if size is None:
        return None
    sizes = (int(size),) * 3 if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(sizes) != 3 or min(sizes) < 1:
        raise InputError(f"size {size}: expected one positive number or three (D, H, W) for volumes")
    return sizes  # type: ignore[return-value]


def resize_volume(image: torch.Tensor, mask: torch.Tensor, spacing: Sequence[float], size: tuple[int, int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float, float]]:
    """(1, D, H, W) image and mask resized to `size` (trilinear image; mask averaged per output voxel, then
    thresholded at 0.5); the spacing grows or shrinks so that the physical extent stays the same."""
    old = image.shape[-3:]
    image = F.interpolate(image[None], size=size, mode="trilinear", align_corners=False)[0].clamp(0, 1)
    mask = (F.interpolate(mask[None], size=size, mode="area")[0] >= 0.5).float()
    new_spacing = tuple(float(s) * o / n for s, o, n in zip(spacing, old, size, strict=True))
    return image, mask, new_spacing  # type: ignore[return-value]
