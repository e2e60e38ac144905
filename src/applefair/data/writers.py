"""Write predicted masks to disk, so that a peer's own scoring code can run on exactly what applefair scored.

2-D masks become ``<id>.png`` (uint8, 0 background / 255 foreground; integer label maps keep their
labels), 3-D masks ``<id>.nii.gz`` (uint8 labels, the voxel spacing in the header). Every file is
written atomically. Sample ids become file names: characters other than letters, digits, ``.``,
``_`` and ``-`` turn into ``_``; two ids that end up with the same file name (also when they differ
only in case, which some file systems do not distinguish) are refused before anything is written.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from applefair.engine.io import atomic_path
from applefair.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM = 150  # leaves room for the suffix and atomic_path's temporary prefix within 255 bytes


def safe_name(sample_id: object) -> str:
    """A file-name stem for `sample_id`: safe characters only, no leading dot, at most 150 characters.

    A longer id is cut and given a short hash of the whole id, so that two long ids stay apart.
    """
    text = str(sample_id)
    stem = _UNSAFE.sub("_", text).lstrip(".")
    if not stem:
        raise InputError(f"sample id {text!r} has nothing usable in a file name")
    if len(stem) > _MAX_STEM:
        stem = f"{stem[:_MAX_STEM - 13]}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    return stem


def prediction_names(ids: Sequence[object]) -> list[str]:
    """File-name stems for `ids`, in order; an `InputError` names the first two ids that would collide."""
    seen: dict[str, object] = {}
    out = []
    for i in ids:
        stem = safe_name(i)
        key = stem.lower()
        if key in seen:
            raise InputError(f"sample ids '{seen[key]}' and '{i}' would both be saved as '{stem}' "
                             "(file names keep only letters, digits, '.', '_' and '-', and ignore case); "
                             "make the ids distinct")
        seen[key] = i
        out.append(stem)
    return out


def save_predictions(folder: str | os.PathLike, ids: Sequence[object],
                     masks: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
                     spacing: float | Sequence[float] | Sequence[Sequence[float] | None] | None = None) -> list[Path]:
    """Write one mask per id into `folder`; returns the paths in the order of `ids`.

    `masks`: a (N, H, W) / (N, D, H, W) array or tensor, or N arrays; a leading channel axis of size 1
    (``(N, 1, H, W)``) is dropped. Binary masks (bool, or only 0 and 1) are written as 0/255 (PNG) or
    0/1 (NIfTI); integer label maps (0..255) keep their labels; probabilities must be thresholded first.
    `spacing`: voxel size of 3-D masks, one number or one per axis (default 1), or one such entry per mask
    (a list as long as `ids`, e.g. each volume's own spacing); PNG holds no spacing.
    A 3-D mask's axes become the NIfTI's i, j, k axes, so nibabel reads back the same array.
    """
    ids = list(ids)
    arrays = [_as_mask(m, ids[j] if j < len(ids) else j) for j, m in enumerate(list(masks))]
    if len(arrays) != len(ids):
        raise InputError(f"{len(ids)} sample ids but {len(arrays)} masks; give one mask per id")
    names = prediction_names(ids)
    spacings = _per_mask(spacing, len(arrays))
    folder = Path(folder)
    paths = []
    for stem, arr, voxel in zip(names, arrays, spacings, strict=True):
        if arr.ndim == 2:
            path = folder / f"{stem}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
        else:
            path = folder / f"{stem}.nii.gz"
            data = nifti_bytes(arr, voxel)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        paths.append(path)
    return paths


def _per_mask(spacing, n: int) -> list:
    """One spacing entry per mask: `spacing` repeated, unless it is a list of `n` per-mask entries (each a
    sequence or None); a flat list of numbers is one spacing per axis."""
    if isinstance(spacing, (list, tuple)) and len(spacing) == n and n and all(
            s is None or isinstance(s, (list, tuple, np.ndarray, torch.Tensor)) for s in spacing):
        return [None if s is None else np.asarray(s, dtype=np.float64).tolist() for s in spacing]
    return [spacing] * n


def _as_mask(mask, sample_id: object) -> np.ndarray:
    """uint8 array: binary masks as 0/255 (2-D) or 0/1 (3-D), label maps unchanged."""
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise InputError(f"mask of '{sample_id}': expected a 2-D or 3-D mask, got shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        labels = arr.astype(np.uint8)
        binary = True
    else:
        if arr.size and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
            raise InputError(f"mask of '{sample_id}': values are not integer labels (threshold probabilities "
                             "before saving)")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise InputError(f"mask of '{sample_id}': labels {lo:g}..{hi:g} do not fit 0..255")
        labels = arr.astype(np.uint8)
        binary = hi <= 1
    if binary and labels.ndim == 2:
        labels = labels * np.uint8(255)
    return np.ascontiguousarray(labels)


def nifti_bytes(arr: np.ndarray, spacing) -> bytes:
    """A gzipped NIfTI-1 file of the uint8 volume `arr` with voxel `spacing` (one number, or one per axis), the
    same bytes for the same input (no time stamp)."""
    import nibabel as nib

    if spacing is None:
        zooms = [1.0] * arr.ndim
    elif isinstance(spacing, (int, float)):
        zooms = [float(spacing)] * arr.ndim
    else:
        zooms = [float(v) for v in spacing]
    if len(zooms) != arr.ndim or not all(z > 0 and np.isfinite(z) for z in zooms):
        raise InputError(f"spacing {spacing!r}: expected one positive number or {arr.ndim} (one per axis)")
    img = nib.Nifti1Image(arr, np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    img.header.set_data_dtype(np.uint8)
    return gzip.compress(img.to_bytes(), mtime=0)
