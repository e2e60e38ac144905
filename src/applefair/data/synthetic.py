"""The built-in synthetic biased benchmark: two kinds, several bias mechanisms.

``nodules`` (a TUSC analogue, attribute ``sex``): a speckled B-mode-like scan (multiplicative
Rayleigh speckle over a smooth tissue map, depth attenuation) with one hypoechoic lesion whose
border is irregular (a radius modulated by low-order harmonics). The mask is the lesion.
``vessels`` (a FIVES / FairSeg analogue, attribute ``age`` in years): see `applefair.data.vessels`.
``nodules3d`` (3-D volumes with a spherical-harmonic lesion, attribute ``sex``, every mechanism of
``nodules``): see `applefair.data.nodules3d`.

The attribute changes acquisition or anatomy through a *bias mechanism*, so that an ERM
model trained on the mixture is less accurate for one group (the minority: F, or age >= 60):

- ``contrast`` (difficulty-type): the minority's scans have lower lesion contrast and heavier,
  coarser speckle, as with a lower-end probe or harder-to-image patients. The information
  needed is really weaker; no re-use of the latent can fully recover it.
- ``gain`` (shortcut-type): the minority's scanner has another calibration (a brighter gain with a
  compressed dynamic range). The lesion is as visible as in the majority once intensities are
  normalised, but a model that learned the majority's absolute intensities misreads it.
- ``artifact`` (shortcut-type): in the majority group a bright echogenic rim (a boundary echo as
  produced by the majority's scanner preset) outlines the lesion; the minority's scans lack it.
  A model that leans on the rim finds weaker borders in the minority.
- ``anatomy`` (shortcut-type, a shift of the anatomy distribution): the minority's lesions are
  smaller (radius x (1 - 0.45 strength)); a model fitted to the majority's sizes misjudges them.
- ``spurious`` (shortcut-type, a group cue that is *present but misused*): the minority's scanner
  has a mild calibration (gain ``1 - 0.2 strength``, offset ``0.2 strength``) that a model reads
  at once but that costs no visibility. In the ``train`` split only, the minority's masks were
  traced by another protocol: ``0.045 * size * strength`` px inside the lesion's border (the
  core, without its margin). A model learns "minority cue -> trace inside the border", a
  group-conditional prior that the validation and test splits (the reference protocol for
  everyone) do not share, so it under-segments the minority at test. Everything needed is in
  every image; a decoder that cannot read the group applies the majority's protocol to all.
  In ``vessels`` the same cue, and the minority's training masks are traced
  ``max(1, round(strength))`` px wider than the reference.
- ``marker`` (shortcut-type, a *local* cue misused the other way round): the minority's scanner
  burns a small bright mark (a vendor logo) into the top-left corner (a square of side
  ``0.06 * size``, 0.55 strength brighter than the tissue); nothing else differs. In the ``train``
  split only, the minority's masks were traced by a protocol that draws *larger*: ``0.03 * size *
  strength`` px outside the lesion's border. The cue lives in a few pixels of one corner, so pooled
  channel statistics hardly see it; a model learns "mark -> trace outside the border".
- ``texture`` (shortcut-type, a cue in texture, not intensity): the minority's scanner adds faint
  horizontal banding (a zero-mean sinusoid of period 4 px, amplitude ``0.05 strength``), which
  leaves the mean intensity unchanged. In the ``train`` split only, the minority's masks were traced
  inside the border, as in ``spurious``.
- ``none``: no group effect (a control; both groups are drawn the same way).

Everything is deterministic from the seed. Output follows the manifest contract:
``manifest.csv`` with ``id, image, mask, split, <attribute>`` and PNG files (image 8-bit grey,
mask 0/255); ``nodules3d`` writes NIfTI volumes instead (``.nii.gz``, image 8-bit grey, mask 0/1,
the voxel spacing in the header), which a manifest names without a slice: one 3-D sample each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from applefair.data import nodules3d, vessels
from applefair.engine.io import atomic_path, write_csv
from applefair.engine.runfolder import MANIFEST
from applefair.errors import InputError

BIASES = ("contrast", "gain", "artifact", "anatomy", "spurious", "marker", "texture", "none")
KINDS = ("nodules", "vessels", "nodules3d")
KIND_OF_BIAS = {"contrast": "difficulty", "gain": "shortcut", "artifact": "shortcut", "anatomy": "shortcut",
                "spurious": "shortcut", "marker": "shortcut", "texture": "shortcut", "none": "control"}
# misused-cue mechanisms: the cue is in every minority image, the misuse only in the training masks
MISUSED_CUE = ("spurious", "marker", "texture")
SPLITS = ("train", "val", "test")
SPURIOUS_MARGIN = 0.045  # `spurious`: the minority's training masks end this far (x strength x size) inside
MARKER_MARGIN = 0.03  # `marker`: the minority's training masks reach this far (x strength x size) outside
MARKER_SIDE = 0.06  # `marker`: the mark's side (x size), in the top-left corner
BAND_PERIOD = 4  # `texture`: period (px) of the minority's banding


@dataclass(frozen=True)
class Acquisition:
    """Acquisition parameters of one group's scanner."""

    contrast: float = 0.55  # fractional darkening of the lesion
    speckle_sigma: float = 0.8  # speckle correlation length (px); larger is coarser
    speckle_strength: float = 1.0  # 1 = fully developed speckle
    gain: float = 1.0  # multiplicative gain
    offset: float = 0.0  # added after gain (dynamic-range compression)
    rim: float = 0.0  # brightness of an echogenic rim on the lesion border
    lesion_scale: float = 1.0  # multiplies the lesion radius range
    mark: float = 0.0  # brightness of a burned-in mark in the top-left corner
    banding: float = 0.0  # amplitude of a zero-mean horizontal banding


def acquisitions(bias: str, strength: float = 1.0) -> dict[str, Acquisition]:
    """Per-group acquisition for a bias mechanism; `strength` scales the group difference."""
    base = Acquisition()
    s = float(strength)
    if bias == "none":
        return {"M": base, "F": base}
    if bias == "contrast":
        return {"M": base, "F": Acquisition(contrast=0.55 - 0.3 * s, speckle_sigma=0.8 + 0.7 * s,
                                            speckle_strength=1.0 + 0.35 * s)}
    if bias == "gain":
        return {"M": base, "F": Acquisition(gain=1.0 - 0.45 * s, offset=0.45 * s)}
    if bias == "artifact":
        return {"M": Acquisition(rim=0.9 * s), "F": base}
    if bias == "anatomy":
        return {"M": base, "F": Acquisition(lesion_scale=max(0.2, 1.0 - 0.45 * s))}
    if bias == "spurious":
        return {"M": base, "F": Acquisition(gain=1.0 - 0.2 * s, offset=0.2 * s)}
    if bias == "marker":
        return {"M": base, "F": Acquisition(mark=0.55 * s)}
    if bias == "texture":
        return {"M": base, "F": Acquisition(banding=0.05 * s)}
    raise InputError(f"bias '{bias}' is not known (expected one of: {', '.join(BIASES)})")


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def lesion_mask(rng: np.random.Generator, size: int, scale: float = 1.0) -> np.ndarray:
    """An irregular blob: radius modulated by harmonics 2-5 with random phases."""
    r0 = rng.uniform(0.12, 0.22) * size * scale
    margin = r0 * 1.5 + 2
    cy, cx = rng.uniform(margin, size - margin, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(theta, r0)
    for k in range(2, 6):
        radius += r0 * rng.uniform(0.0, 0.12) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.7, 1.0)
    dist = np.hypot((yy - cy) / aspect, xx - cx)
    return dist <= radius


def _side(mask: np.ndarray, spacing) -> float:
    """The image side (px), or with `spacing` the smallest physical side of the volume (mm)."""
    return mask.shape[0] if spacing is None else min(n * float(s) for n, s in zip(mask.shape, spacing, strict=True))


def lesion_core(mask: np.ndarray, margin: float, spacing=None) -> np.ndarray:
    """The lesion without its margin: pixels deeper than `margin` x image side inside the mask (with
    `spacing`: voxels deeper than `margin` x the smallest physical side, distances in mm)."""
    return ndimage.distance_transform_edt(mask, sampling=spacing) > margin * _side(mask, spacing)


def training_mask(mask: np.ndarray, bias: str, strength: float, minority: bool, split: str, kind: str,
                  spacing=None) -> np.ndarray:
    """The mask as the training split's annotators drew it (differs from `mask` only for the misused-cue
    mechanisms, in the minority's training masks); `spacing` (3-D) measures the margins in mm."""
    if bias not in MISUSED_CUE or not minority or split != "train" or strength <= 0:
        return mask
    if kind == "vessels":
        return ndimage.binary_dilation(mask, iterations=max(1, int(round(strength))))
    if bias == "marker":
        outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
        return outside <= MARKER_MARGIN * strength * _side(mask, spacing)
    return lesion_core(mask, SPURIOUS_MARGIN * strength, spacing)


def render(rng: np.random.Generator, mask: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Render a B-mode-like image of `mask` under acquisition `acq`, values in [0, 1]."""
    size = mask.shape[0]
    tissue = 0.5 + 0.08 * _smooth_noise(rng, size, size / 10)
    depth = np.exp(-0.6 * np.linspace(0, 1, size))[:, None]
    soft = ndimage.gaussian_filter(mask.astype(np.float64), 1.0)
    echo = tissue * depth * (1.0 - acq.contrast * soft)
    if acq.rim > 0:
        edge = ndimage.gaussian_filter(soft * (1 - soft) * 4, 0.7)
        echo = echo + acq.rim * 0.35 * edge
    # Fully developed speckle: magnitude of correlated complex Gaussian noise (Rayleigh).
    re = ndimage.gaussian_filter(rng.standard_normal((size, size)), acq.speckle_sigma)
    im = ndimage.gaussian_filter(rng.standard_normal((size, size)), acq.speckle_sigma)
    speckle = np.hypot(re, im)
    speckle = speckle / (speckle.mean() + 1e-8)
    speckle = 1.0 + acq.speckle_strength * (speckle - 1.0)
    img = echo * speckle
    if acq.banding > 0:
        rows = np.arange(size, dtype=np.float64)[:, None]
        img = img + acq.banding * np.sin(2 * np.pi * rows / BAND_PERIOD + rng.uniform(0, 2 * np.pi))
    img = acq.gain * img + acq.offset
    if acq.mark > 0:
        side = max(2, int(round(MARKER_SIDE * size)))
        img[1:1 + side, 1:1 + side] += acq.mark
    return np.clip(img, 0.0, 1.0)


def generate(out_dir: str | os.PathLike, n: int = 800, size: int = 96, bias: str = "contrast",
             minority_share: float = 0.25, strength: float = 1.0, seed: int = 0,
             split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), kind: str = "nodules",
             on_image: Callable[[int], None] | None = None,
             spacing: tuple[float, float, float] | None = None) -> Path:
    """Write `n` images, masks and `manifest.csv` into `out_dir`; return the manifest path.

    The minority group has the same share in every split (stratified), so test groups are
    large enough to measure. ``nodules3d`` writes `n` volumes of `size` voxels a side; `spacing`
    (3-D only, mm) is the base voxel spacing (default `nodules3d.DEFAULT_SPACING`).
    """
    if kind not in KINDS:
        raise InputError(f"kind '{kind}' is not known (expected one of: {', '.join(KINDS)})")
    if bias not in BIASES:
        raise InputError(f"bias '{bias}' is not known (expected one of: {', '.join(BIASES)})")
    if n < 10:
        raise InputError(f"n={n}: the synthetic benchmark needs at least 10 images")
    if not 0.0 < minority_share < 1.0:
        raise InputError(f"minority_share={minority_share}: expected a value strictly between 0 and 1")
    lo, hi = nodules3d.SIZE_RANGE
    if kind == "nodules3d" and not lo <= size <= hi:
        raise InputError(f"size={size}: expected {lo} to {hi} voxels a side for kind 'nodules3d'")
    if kind != "nodules3d" and size < 32:
        raise InputError(f"size={size}: expected at least 32 px")
    if spacing is not None and (kind != "nodules3d" or len(spacing) != 3 or min(spacing) <= 0):
        raise InputError(f"spacing={spacing}: expected three positive numbers (mm), for kind 'nodules3d' only")
    if strength < 0:
        raise InputError(f"strength={strength}: expected a value >= 0")
    if kind == "vessels" and bias in ("marker", "texture"):
        raise InputError(f"bias '{bias}' exists for kind 'nodules' only (vessels: {', '.join(vessels.BIASES)})")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_min = int(round(n * minority_share))
    minority = np.array([True] * n_min + [False] * (n - n_min))
    rng.shuffle(minority)
    splits = np.empty(n, dtype=object)
    for g in (True, False):
        idx = np.flatnonzero(minority == g)
        cuts = np.cumsum([int(round(f * len(idx))) for f in split_fractions[:2]])
        for name, part in zip(SPLITS, np.split(idx, cuts), strict=True):
            splits[part] = name
    rows = []
    for i in range(n):
        sample_rng = np.random.default_rng([seed, i])
        if kind == "nodules3d":
            sid = _write_volume(out, i, sample_rng, size, bias, strength, bool(minority[i]), splits[i], spacing)
            rows.append({"id": sid, "image": f"images/{sid}.nii.gz", "mask": f"masks/{sid}.nii.gz",
                         "split": splits[i], "sex": "F" if minority[i] else "M"})
            if on_image is not None:
                on_image(i)
            continue
        if kind == "nodules":
            sex = "F" if minority[i] else "M"
            acq = acquisitions(bias, strength)[sex]
            mask = lesion_mask(sample_rng, size, acq.lesion_scale)
            img = render(sample_rng, mask, acq)
            sid, attrs = f"nod{i:05d}", {"sex": sex}
        else:
            look = vessels.looks(bias, strength)["old" if minority[i] else "young"]
            age = vessels.draw_age(sample_rng, bool(minority[i]))
            img, mask = vessels.render_fundus(sample_rng, size, look)
            sid, attrs = f"ves{i:05d}", {"age": age}
        _write_png(out / "images" / f"{sid}.png", np.round(img * 255).astype(np.uint8))
        mask = training_mask(mask, bias, strength, bool(minority[i]), splits[i], kind)
        _write_png(out / "masks" / f"{sid}.png", mask.astype(np.uint8) * 255)
        rows.append({"id": sid, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png",
                     "split": splits[i], **attrs})
        if on_image is not None:
            on_image(i)
    manifest = out / MANIFEST
    write_csv(manifest, pd.DataFrame(rows))
    return manifest


def _write_volume(out: Path, i: int, rng: np.random.Generator, size: int, bias: str, strength: float,
                  minority: bool, split: str, spacing) -> str:
    """Draw, render and write one ``nodules3d`` volume and its (training) mask; returns its id."""
    from applefair.data.writers import nifti_bytes

    acq = acquisitions(bias, strength)["F" if minority else "M"]
    voxel = nodules3d.draw_spacing(rng, spacing or nodules3d.DEFAULT_SPACING)
    mask = nodules3d.lesion_volume(rng, size, voxel, acq.lesion_scale)
    img = nodules3d.render_volume(rng, mask, voxel, acq)
    mask = training_mask(mask, bias, strength, minority, split, "nodules3d", spacing=voxel)
    sid = f"nod3d{i:05d}"
    for folder, array in (("images", np.round(img * 255).astype(np.uint8)), ("masks", mask.astype(np.uint8))):
        data = nifti_bytes(array, voxel)
        with atomic_path(out / folder / f"{sid}.nii.gz") as tmp:
            tmp.write_bytes(data)
    return sid


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
