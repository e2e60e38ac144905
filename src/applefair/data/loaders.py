"""Reading one image or mask array from any supported container, and normalising it.

Every format ends here: a manifest row names a file (``image_path`` / ``mask_path``) and,
for containers holding several arrays, a key (NPZ) or a slice (NIfTI). Images become
float32 in [0, 1]; masks become {0, 1} float32 via `binarise`. Errors are `InputError`s that
name the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from applefair.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".npz", ".nii", ".nii.gz")


@dataclass
class LoadOptions:
    """How raw arrays become model inputs (stored in ``frame.attrs['load']`` by readers).

    color: ``grey`` (luminance) or ``green`` (green channel, common for fundus vessels).
    intensity: ``auto`` (uint8 / 255; uint16 / 65535, or / 255 if its max <= 255; floats already
      in [0, 1] kept; anything else min-max per image), ``minmax`` (always per image) or
      ``window`` (clip to `window` = (lo, hi) then scale; CT in Hounsfield units).
    foreground: raw mask values that count as foreground (e.g. [255] or FairSeg's cup [-2]).
    label_map: raw value -> label; labels > 0 are foreground (e.g. {1: 0, 2: 1} keeps class 2).
    threshold: raw values > threshold are foreground (lossy JPG masks).
    Without any of the three, a mask must be binary (at most one non-zero value).
    """

    color: str = "grey"
    intensity: str = "auto"
    window: tuple[float, float] | None = None
    foreground: list[float] | None = None
    label_map: dict[float, float] | None = None
    threshold: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_any(cls, d: dict | LoadOptions | None) -> LoadOptions:
        if isinstance(d, LoadOptions):
            return d
        d = dict(d or {})
        known = {k: d.pop(k) for k in list(d) if k in cls.__dataclass_fields__ and k != "extra"}
        if known.get("foreground") is not None and not isinstance(known["foreground"], (list, tuple)):
            known["foreground"] = [known["foreground"]]
        if known.get("label_map") is not None:
            known["label_map"] = {float(k): float(v) for k, v in dict(known["label_map"]).items()}
        opts = cls(**known, extra=d)
        if opts.color not in ("grey", "green"):
            raise InputError(f"color '{opts.color}': expected grey or green")
        if opts.intensity not in ("auto", "minmax", "window"):
            raise InputError(f"intensity '{opts.intensity}': expected auto, minmax or window")
        if opts.intensity == "window" and (opts.window is None or len(opts.window) != 2):
            raise InputError("intensity 'window' needs window=(lo, hi)")
        return opts

    def to_dict(self) -> dict:
        return {"color": self.color, "intensity": self.intensity, "window": self.window,
                "foreground": self.foreground, "label_map": self.label_map, "threshold": self.threshold}


def read_array(path: str, key: str | None = None, index: int | None = None, axis: int = 2) -> np.ndarray:
    """The raw array stored at `path` (NPZ: array `key`; NIfTI: slice `index` along `axis`)."""
    low = path.lower()
    try:
        if low.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if low.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                names = [key] if key and "|" not in key else (key or "").split("|")
                for name in names:
                    if name in z.files:
                        return z[name]
                raise InputError(f"{path}: key '{key}' not found (keys: {', '.join(z.files)})")
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            vol = nib.load(path)
            sl: list = [slice(None)] * len(vol.shape)
            sl[axis] = int(index or 0)
            return np.asarray(vol.dataobj[tuple(sl)])
        if low.endswith((".tif", ".tiff")):
            import tifffile

            return tifffile.imread(path)
        with Image.open(path) as im:
            if im.mode in ("P", "1", "LA", "PA"):
                im = im.convert("RGBA" if "A" in im.mode else "L")
            return np.asarray(im)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, KeyError, EOFError) as exc:
        raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def read_volume(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The raw 3-D array of a NIfTI file (a trailing axis of length 1 is dropped) and its voxel spacing."""
    import nibabel as nib

    try:
        img = nib.load(path)
        arr = np.asarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises several unrelated types for bad files
        raise InputError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(arr.shape)}")
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"{path}: voxel spacing {zooms} in the header is not three positive numbers")
    return arr, zooms


def to_grey(arr: np.ndarray, color: str = "grey", path: str = "") -> np.ndarray:
    """(H, W) from (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3].astype(np.float64)
        a = rgb[..., 1] if color == "green" else rgb @ np.array([0.299, 0.587, 0.114])
        a = a.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else a
    if a.ndim != 2:
        raise InputError(f"{path}: expected a 2D image (H, W) or (H, W, 3), got shape {tuple(np.shape(arr))}")
    return a


def normalise(arr: np.ndarray, opts: LoadOptions, path: str = "", volume: bool = False) -> np.ndarray:
    """Float32 image in [0, 1] following `opts.intensity` (a grey 2-D image, or a 3-D `volume` as it is)."""
    a = np.asarray(arr) if volume else to_grey(arr, opts.color, path)
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise InputError(f"{path}: image has NaN or Inf pixels")
    x = a.astype(np.float32)
    if opts.intensity == "window":
        lo, hi = (float(v) for v in opts.window)
        return np.clip((x - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
    if opts.intensity == "auto":
        if a.dtype == np.uint8:
            return x / 255.0
        if a.dtype == np.uint16:
            return x / (65535.0 if x.max() > 255 else 255.0)
        if np.issubdtype(a.dtype, np.floating) and x.min() >= 0.0 and x.max() <= 1.0:
            return x
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def binarise(arr: np.ndarray, opts: LoadOptions, path: str = "", volume: bool = False) -> np.ndarray:
    """{0, 1} float32 mask from a raw mask, using foreground values, a label map or a threshold (a 2-D mask,
    or a 3-D `volume`)."""
    a = np.asarray(arr)
    if volume:
        if a.ndim != 3:
            raise InputError(f"{path}: expected a 3D mask volume, got shape {tuple(np.shape(arr))}")
    elif a.ndim == 3:
        a = to_grey(a, "grey", path) if a.shape[-1] in (3, 4) or a.shape[0] in (3, 4) else a
        if a.ndim == 3 and 1 in a.shape:
            a = a.squeeze()
    if not volume and a.ndim != 2:
        raise InputError(f"{path}: expected a 2D mask, got shape {tuple(np.shape(arr))}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise InputError(f"{path}: mask has NaN or Inf values")
    if opts.label_map is not None:
        values = np.unique(a)
        missing = [v for v in values.tolist() if float(v) not in opts.label_map]
        if missing:
            raise InputError(f"{path}: mask value(s) {missing[:5]} not in label_map {opts.label_map}")
        fg = [k for k, v in opts.label_map.items() if v > 0]
        return np.isin(a, fg).astype(np.float32)
    if opts.foreground is not None:
        return np.isin(a, np.asarray(opts.foreground, dtype=np.float64)).astype(np.float32)
    if opts.threshold is not None:
        return (a > opts.threshold).astype(np.float32)
    values = np.unique(a)
    nonzero = values[values != 0]
    if len(nonzero) > 1:
        shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
        raise InputError(f"{path}: mask is not binary ({len(values)} values: {shown}); "
                         "give foreground=VALUES, a label_map or a threshold")
    return (a != 0).astype(np.float32)


def load_part(row, part: str, opts: LoadOptions) -> np.ndarray:
    """The image (normalised) or the mask (binarised) of one manifest row; `part` is image or mask."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    index = None if _missing(get("slice", None)) else int(get("slice", None))
    axis = 2 if _missing(get("axis", None)) else int(get("axis", None))
    path = str(get(f"{part}_path"))
    if is_volume_row(row):  # a NIfTI file without a slice: the whole volume
        raw = read_volume(path)[0]
        return normalise(raw, opts, path, volume=True) if part == "image" else binarise(raw, opts, path, volume=True)
    raw = read_array(path, _key(get(f"{part}_key", None)), index, axis)
    return normalise(raw, opts, path) if part == "image" else binarise(raw, opts, path)


def is_volume_path(path: object) -> bool:
    """Whether `path` names a NIfTI file (.nii or .nii.gz)."""
    return str(path).lower().endswith((".nii", ".nii.gz"))


def is_volume_row(row) -> bool:
    """Whether a manifest row is a 3-D sample: a NIfTI image with no ``slice`` (readers of 2-D slices of a
    volume name the slice; a manifest that names only the file means the whole volume)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    return is_volume_path(get("image_path", "")) and _missing(get("slice", None))


def load_pair(row, opts: LoadOptions) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of one manifest row, checked for matching shapes."""
    img, msk = load_part(row, "image", opts), load_part(row, "mask", opts)
    if img.shape != msk.shape:
        get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
        raise InputError(f"{get('image_path')}: image shape {img.shape} differs from mask shape {msk.shape} "
                         f"({get('mask_path')})")
    return img, msk


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v == ""


def _key(k) -> str | None:
    return None if _missing(k) else str(k)
