"""The manifest contract, the generic CSV reader, and the Dataset that serves any format.

A manifest is a table with columns ``id``, ``image_path``, ``mask_path`` (absolute),
``split`` (train/val/test) and one column per attribute. Containers with several arrays
add ``image_key`` / ``mask_key`` (NPZ) or ``slice`` / ``axis`` (NIfTI). How raw arrays are
normalised (colour, intensity, mask foreground) travels in ``frame.attrs['load']``.
On disk, a CSV manifest has columns ``image``, ``mask``, ``split`` (names configurable),
paths relative to the manifest's folder that may not escape it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from applefair.data.groups import GroupSpec
from applefair.data.loaders import (
    IMAGE_SUFFIXES,
    LoadOptions,
    binarise,
    is_volume_row,
    load_pair,
    normalise,
    read_array,
)
from applefair.engine.runfolder import MANIFEST
from applefair.errors import InputError

REQUIRED = ("image", "mask", "split")
SPLITS = ("train", "val", "test")
LOAD_KEYS = ("color", "intensity", "window", "foreground", "label_map", "threshold")


def read_manifest(path: str | os.PathLike, image_col: str = "image", mask_col: str = "mask",
                  split_col: str | None = "split", id_col: str = "id", root: str | os.PathLike | None = None,
                  split_fractions: tuple[float, float, float] | None = None, seed: int = 0,
                  **load) -> pd.DataFrame:
    """Read and validate a CSV manifest (paths, ids, splits; not pixels, see `validate_samples`).

    Column names are configurable; without a split column give `split_fractions` for a
    deterministic split by id. `load` holds LoadOptions (foreground, label_map, color, ...).
    Returns the manifest contract with absolute ``image_path`` / ``mask_path``.
    """
    path = usable_path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: manifest not found (expected a CSV with columns image, mask, split)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV ({str(exc).strip()})") from None
    wanted = [image_col, mask_col] + ([split_col] if split_col and split_fractions is None else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")
    if len(frame) == 0:
        raise InputError(f"{path}: manifest has no rows")
    frame = frame.rename(columns={image_col: "image", mask_col: "mask"})
    if id_col != "id" and id_col in frame.columns:
        frame = frame.rename(columns={id_col: "id"})
    if "id" not in frame.columns:
        frame.insert(0, "id", [Path(p).name.split(".")[0] for p in frame["image"]])
    if split_col and split_col in frame.columns and split_col != "split":
        frame = frame.rename(columns={split_col: "split"})
    if "split" not in frame.columns or split_fractions is not None:
        frame["split"] = assign_splits(frame["id"], split_fractions or (0.6, 0.2, 0.2), seed)
    base = Path(root) if root is not None else path.parent
    frame["image_path"] = resolve_paths(frame["image"], base, path, "image" if image_col == "image" else image_col)
    frame["mask_path"] = resolve_paths(frame["mask"], base, path, "mask" if mask_col == "mask" else mask_col)
    return finish(frame, path, load)


def usable_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, or InputError if it is empty or the OS cannot even look it up (a name too long...)."""
    text = str(path)
    if not text.strip():
        raise InputError("dataset path is empty (expected a manifest CSV or a dataset folder)")
    p = Path(path)
    try:
        p.exists()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{text[:200]}: not a usable path ({reason.lower()})") from None
    return p


def finish(frame: pd.DataFrame, source: str | os.PathLike, load: dict | None = None,
           fmt: str = "csv") -> pd.DataFrame:
    """Shared last step of every reader: check ids and splits, attach load options and source."""
    frame = frame.reset_index(drop=True)
    frame["id"] = frame["id"].astype(str)
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise InputError(f"{source}: row {int(dup.index[0]) + 2}, column id: duplicate id '{dup.iloc[0]}'")
    bad = frame.index[~frame["split"].isin(SPLITS)]
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{source}: row {i + 2}, column split: '{frame['split'][i]}' "
                         f"(expected one of {', '.join(SPLITS)})")
    unknown = set(load or {}) - set(LOAD_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown option(s) {', '.join(sorted(unknown))} "
                         f"(load options: {', '.join(LOAD_KEYS)})")
    frame.attrs["load"] = LoadOptions.from_any(load).to_dict()
    frame.attrs["source"] = str(source)
    frame.attrs["format"] = fmt
    return frame


def resolve_paths(values, root: Path, source: Path, column: str, must_exist: bool = True) -> list[str]:
    """Absolute paths under `root`; InputError (file, row, column) for escapes and missing files."""
    root = Path(root).resolve()
    out = []
    for i, rel in enumerate(values):
        rel = str(rel).strip()
        if not rel:
            raise InputError(f"{source}: row {i + 2}, column {column}: empty path")
        try:  # a NUL byte, a name too long for the file system, a loop of links: bad input, not a crash
            p = (root / rel).resolve()
            if root != p and root not in p.parents:
                raise InputError(f"{source}: row {i + 2}, column {column}: path '{rel}' escapes the dataset root "
                                 f"{root}")
            if must_exist and not p.is_file():
                raise InputError(f"{source}: row {i + 2}, column {column}: file '{rel}' not found")
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputError(f"{source}: row {i + 2}, column {column}: path '{rel[:200]}' cannot be used "
                             f"({reason.lower()})") from None
        if not p.name.lower().endswith(IMAGE_SUFFIXES):
            raise InputError(f"{source}: row {i + 2}, column {column}: '{rel}' is not a supported file type "
                             f"(expected one of {', '.join(IMAGE_SUFFIXES)})")
        out.append(str(p))
    return out


def assign_splits(ids, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> list[str]:
    """Deterministic train/val/test by a hash of each id (stable when rows are added or reordered).

    Pass patient ids to keep all images of a patient in one split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"split fractions {fractions}: expected three non-negative numbers summing to 1")
    cut = np.cumsum(fractions)
    out = []
    for i in ids:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64
        out.append(SPLITS[int(np.searchsorted(cut, h, side="right"))] if h < cut[-1] else SPLITS[-1])
    return out


def load_image(path: str, **load) -> np.ndarray:
    """A grey image as float32 in [0, 1] (any supported file)."""
    return normalise(read_array(path), LoadOptions.from_any(load), path)


def load_mask(path: str, **load) -> np.ndarray:
    """A mask as float32 {0, 1} (binary, or with foreground / label_map / threshold)."""
    return binarise(read_array(path), LoadOptions.from_any(load), path)


class SegmentationDataset(Dataset):
    """Samples of one split: dict(image (1,H,W), mask (1,H,W), group (int, -1 unknown), index).

    3-D samples (NIfTI volumes, `applefair.data.volumes`) give image and mask (1, D, H, W) and their
    voxel spacing (`spacing`, a float64 tensor of 3), so a batch carries one spacing per sample.
    Lazy: files are read on demand (works with DataLoader worker processes). `cache` keeps
    decoded tensors in memory up to `cache_bytes` (per process); `cache_dir` also stores them
    as .npz files so later runs and other workers skip decoding. `size` resizes every sample
    to (size, size) (bilinear image, area-then-0.5 mask), so mixed-size data can be batched;
    volumes to (size, size, size) or (D, H, W), with the spacing rescaled to the same extent.
    """

    def __init__(self, frame: pd.DataFrame, groups: GroupSpec | None = None, split: str | None = None,
                 cache: bool = True, size: int | tuple[int, ...] | None = None,
                 cache_dir: str | os.PathLike | None = None, load: dict | LoadOptions | None = None,
                 cache_bytes: int = 2 << 30):
        attrs = dict(frame.attrs)
        sub = frame if split is None else frame[frame["split"] == split]
        self.frame = sub.reset_index(drop=True)
        self.frame.attrs.update(attrs)
        self.options = LoadOptions.from_any(load if load is not None else attrs.get("load"))
        self.group_ids = (groups.assign(self.frame) if groups is not None
                          else np.full(len(self.frame), -1, dtype=np.int64))
        self._rows = self.frame.to_dict("records")  # plain dicts: cheap per-item access, picklable
        self.volumes = _all_volumes(self._rows, attrs.get("source", "manifest"))
        if self.volumes:
            from applefair.data.volumes import volume_size

            self.size = volume_size(size)
        else:
            self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.cache = cache
        self.cache_bytes = int(cache_bytes)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._store: dict[int, tuple[torch.Tensor, ...]] = {}
        self._stored_bytes = 0

    @property
    def spatial_dims(self) -> int:
        """3 for volumes, 2 for images."""
        return 3 if self.volumes else 2

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> dict:
        if i in self._store:
            decoded = self._store[i]
        else:
            decoded = self._decode(i)
            nbytes = decoded[0].numel() * 4 + decoded[1].numel() * 4
            if self.cache and self._stored_bytes + nbytes <= self.cache_bytes:
                self._store[i] = decoded
                self._stored_bytes += nbytes
        item = {"image": decoded[0], "mask": decoded[1], "group": int(self.group_ids[i]), "index": i}
        if self.volumes:
            item["spacing"] = decoded[2]
        return item

    def _decode(self, i: int) -> tuple[torch.Tensor, ...]:
        row = self._rows[i]
        disk = self._disk_path(row) if self.cache_dir else None
        if self.volumes:
            return self._decode_volume(row, disk)
        if disk is not None and disk.is_file():
            with np.load(disk, allow_pickle=False) as z:
                return torch.from_numpy(z["image"].astype(np.float32))[None], torch.from_numpy(
                    z["mask"].astype(np.float32))[None]
        img, msk = load_pair(row, self.options)
        image, mask = torch.from_numpy(img)[None], torch.from_numpy(msk)[None]
        if self.size and tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
            mask = (F.interpolate(mask[None], size=self.size, mode="area")[0] >= 0.5).float()
        if disk is not None:
            from applefair.engine.io import atomic_path

            with atomic_path(disk) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, image=image[0].numpy(), mask=mask[0].numpy().astype(np.uint8))
        return image, mask

    def _decode_volume(self, row: dict, disk: Path | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from applefair.data.volumes import load_volume, resize_volume

        if disk is not None and disk.is_file():
            with np.load(disk, allow_pickle=False) as z:
                return (torch.from_numpy(z["image"].astype(np.float32))[None],
                        torch.from_numpy(z["mask"].astype(np.float32))[None], torch.from_numpy(z["spacing"]))
        img, msk, spacing = load_volume(row, self.options)
        image, mask = torch.from_numpy(img)[None], torch.from_numpy(msk)[None]
        if self.size and tuple(image.shape[-3:]) != self.size:
            image, mask, spacing = resize_volume(image, mask, spacing, self.size)
        spacing_t = torch.tensor(spacing, dtype=torch.float64)
        if disk is not None:
            from applefair.engine.io import atomic_path

            with atomic_path(disk) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, image=image[0].numpy(), mask=mask[0].numpy().astype(np.uint8),
                         spacing=spacing_t.numpy())
        return image, mask, spacing_t

    def _disk_path(self, row: dict) -> Path:
        key = repr((row.get("image_path"), row.get("mask_path"), row.get("image_key"), row.get("mask_key"),
                    row.get("slice"), row.get("axis"), self.size, self.options.to_dict()))
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"

    def spacings(self) -> list[tuple[float, ...] | None]:
        """Each sample's voxel spacing (volumes; read once, cached like the samples), or None per 2-D image."""
        if not self.volumes:
            return [None] * len(self)
        return [tuple(float(v) for v in self[i]["spacing"]) for i in range(len(self))]

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()


def _all_volumes(rows: list[dict], source: object) -> bool:
    """Whether the rows are 3-D samples; a mix of volumes and 2-D images cannot be batched."""
    kinds = {is_volume_row(r) for r in rows}
    if len(kinds) > 1:
        first = next(r for r in rows if is_volume_row(r))
        raise InputError(f"{source}: mixes whole NIfTI volumes (e.g. '{first.get('image_path')}') with 2-D images; "
                         "a dataset holds one or the other")
    return kinds == {True}
