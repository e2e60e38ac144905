"""Reading a manifest (the data contract) and serving its samples as tensors.

A manifest is a CSV with columns ``image``, ``mask``, ``split`` (train/val/test) and one
column per attribute; paths are relative to the manifest's folder and may not escape it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from applefair.data.groups import GroupSpec
from applefair.errors import InputError

REQUIRED = ("image", "mask", "split")
SPLITS = ("train", "val", "test")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest; returns it with an ``id`` column and absolute paths
    in ``image_path`` / ``mask_path``. Errors name the file, row and column."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise InputError(f"{path}: manifest not found (expected a CSV with columns image, mask, split)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                         f"(found: {', '.join(frame.columns)})")
    if len(frame) == 0:
        raise InputError(f"{path}: manifest has no rows")
    if "id" not in frame.columns:
        frame.insert(0, "id", [Path(p).stem for p in frame["image"]])
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        row = int(dup.index[0]) + 2
        raise InputError(f"{path}: row {row}, column id: duplicate id '{dup.iloc[0]}'")
    root = path.parent.resolve()
    for col in ("image", "mask"):
        resolved = []
        for i, rel in enumerate(frame[col]):
            p = (root / rel).resolve()
            if root != p and root not in p.parents:
                raise InputError(f"{path}: row {i + 2}, column {col}: path '{rel}' escapes the dataset root")
            if not p.is_file():
                raise InputError(f"{path}: row {i + 2}, column {col}: file '{rel}' not found")
            resolved.append(str(p))
        frame[f"{col}_path"] = resolved
    bad = frame.index[~frame["split"].isin(SPLITS)]
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{path}: row {i + 2}, column split: '{frame['split'][i]}' "
                         f"(expected one of {', '.join(SPLITS)})")
    frame.attrs["source"] = str(path)
    return frame


def load_image(path: str) -> np.ndarray:
    """A grey image as float32 in [0, 1] (8/16-bit PNG, JPG, TIFF)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I", "F") else im)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None
    arr = arr.astype(np.float32)
    top = 65535.0 if arr.max() > 255 else 255.0
    out = arr / top
    if not np.isfinite(out).all():
        raise InputError(f"{path}: image has NaN or Inf pixels")
    return out


def load_mask(path: str) -> np.ndarray:
    """A binary mask (any non-zero pixel is foreground) as float32 {0, 1}."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: unreadable mask ({exc})") from None
    return (arr > 0).astype(np.float32)


class SegmentationDataset(Dataset):
    """Samples of one split: dict(image (1,H,W), mask (1,H,W), group (int, -1 unknown), index).

    Files are read on demand; decoded arrays are kept when `cache` is true.
    """

    def __init__(self, frame: pd.DataFrame, groups: GroupSpec | None = None, split: str | None = None,
                 cache: bool = True):
        sub = frame if split is None else frame[frame["split"] == split]
        self.frame = sub.reset_index(drop=True)
        self.group_ids = (groups.assign(self.frame) if groups is not None
                          else np.full(len(self.frame), -1, dtype=np.int64))
        self.cache = cache
        self._store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> dict:
        if i in self._store:
            image, mask = self._store[i]
        else:
            row = self.frame.iloc[i]
            img, msk = load_image(row["image_path"]), load_mask(row["mask_path"])
            if img.shape != msk.shape:
                raise InputError(f"{row['image_path']}: image shape {img.shape} differs from "
                                 f"mask shape {msk.shape} ({row['mask_path']})")
            image, mask = torch.from_numpy(img)[None], torch.from_numpy(msk)[None]
            if self.cache:
                self._store[i] = (image, mask)
        return {"image": image, "mask": mask, "group": int(self.group_ids[i]), "index": i}

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()
