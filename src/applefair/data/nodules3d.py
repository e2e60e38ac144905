"""The 3-D synthetic benchmark ``nodules3d``: small ultrasound-like volumes with one lesion each.

A 3-D analogue of ``nodules`` (`applefair.data.synthetic`), small enough for a CPU (16-96 voxels a
side; 32-48 in the tests): a cube of voxels with anisotropic spacing (slices ``DEFAULT_SPACING[0]`` mm
apart, in-plane ``DEFAULT_SPACING[1:]`` mm, the in-plane spacing of each volume drawn within
+-``SPACING_JITTER``, as fields of view differ between patients), holding one hypoechoic lesion whose
surface is a sphere modulated by real spherical harmonics of degree 2-4. Everything is drawn in
millimetres, so a lesion is round in the patient and flattened in voxels along the thick-slice axis.

Each axial slice (H, W) looks like a ``nodules`` image: a smooth tissue map attenuated with depth
(along H), multiplicative speckle, and the lesion darkened by the acquisition's contrast. The group's
acquisition (`synthetic.Acquisition`) carries every bias mechanism of ``nodules`` over to 3-D: contrast,
speckle, gain/offset, an echogenic rim, lesion size, a burned-in mark (a small cube in the corner), and
banding along H; the misused-cue mechanisms trace the minority's training masks inside (or outside)
the lesion by a margin in millimetres (`synthetic.training_mask` with the spacing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, special

DEFAULT_SPACING = (1.5, 1.0, 1.0)  # mm: (D, H, W), thicker slices than in-plane pixels
SPACING_JITTER = 0.15  # in-plane spacing x U(1 - j, 1 + j) per volume
SIZE_RANGE = (16, 96)  # voxels a side
DEGREES = (2, 3, 4)  # spherical-harmonic degrees of the lesion surface
MARK_SIDE = 0.06  # `marker`: the mark's side (x size), a cube in the (0, 0, 0) corner
BAND_PERIOD = 4  # `texture`: period (voxels along H) of the banding


def draw_spacing(rng: np.random.Generator, base: Sequence[float] = DEFAULT_SPACING) -> tuple[float, float, float]:
    """One volume's voxel spacing (mm): `base`, with the in-plane spacing scaled by U(1 - j, 1 + j)."""
    u = rng.uniform(1 - SPACING_JITTER, 1 + SPACING_JITTER)
    return float(base[0]), float(base[1]) * u, float(base[2]) * u


def _coords(size: int, spacing: Sequence[float]) -> list[np.ndarray]:
    """Voxel centres in mm, one (size, size, size) grid per axis."""
    axes = [(np.arange(size) + 0.5) * s for s in spacing]
    return list(np.meshgrid(*axes, indexing="ij"))


def _real_harmonic(degree: int, order: int, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    """The real spherical harmonic of `degree`, `order` (orthonormal on the sphere)."""
    if hasattr(special, "sph_harm_y"):
        y = special.sph_harm_y(degree, abs(order), polar, azimuth)
    else:  # scipy < 1.15: sph_harm(order, degree, azimuth, polar)
        y = special.sph_harm(abs(order), degree, azimuth, polar)
    if order == 0:
        return y.real
    sign = (-1) ** order
    return np.sqrt(2) * sign * (y.real if order > 0 else y.imag)


def lesion_volume(rng: np.random.Generator, size: int, spacing: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """A lesion (bool, (size,) * 3): radius r0 (16-26% of the smallest physical side, x `scale`) modulated by
    real spherical harmonics of degree 2-4 with random coefficients, centred well inside the volume."""
    extent = min(size * float(s) for s in spacing)
    r0 = rng.uniform(0.16, 0.26) * extent * scale
    centre = []
    for s in spacing:
        side = size * float(s)
        margin = min(r0 * 1.4 + 2 * float(s), side / 2)
        centre.append(rng.uniform(margin, side - margin))
    d = [c - m for c, m in zip(_coords(size, spacing), centre, strict=True)]
    r = np.sqrt(sum(x * x for x in d))
    near = r <= 1.4 * r0  # the radius never exceeds 1.4 r0: only these voxels need the harmonics
    polar = np.arccos(np.clip(d[0][near] / np.maximum(r[near], 1e-9), -1.0, 1.0))
    azimuth = np.arctan2(d[1][near], d[2][near])
    shape = np.zeros_like(polar)
    for degree in DEGREES:
        for order in range(-degree, degree + 1):
            shape += rng.normal(0.0, 0.35 / degree) * _real_harmonic(degree, order, polar, azimuth)
    mask = np.zeros(r.shape, dtype=bool)
    mask[near] = r[near] <= r0 * np.clip(1.0 + shape, 0.6, 1.4)
    return mask


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def render_volume(rng: np.random.Generator, mask: np.ndarray, spacing: Sequence[float], acq) -> np.ndarray:
    """An ultrasound-like volume of `mask` under acquisition `acq` (a `synthetic.Acquisition`), in [0, 1].

    Smoothing lengths are in mm (converted per axis with `spacing`), so texture looks the same in every
    volume whatever its spacing."""
    size = mask.shape[0]
    per_axis = np.asarray(spacing, dtype=np.float64)
    extent = size * float(per_axis.min())
    tissue = 0.5 + 0.08 * _smooth_noise(rng, mask.shape, tuple(extent / 10 / per_axis))
    depth = np.exp(-0.6 * np.linspace(0, 1, size))[None, :, None]  # attenuation along H, as in each 2-D slice
    soft = ndimage.gaussian_filter(mask.astype(np.float64), tuple(per_axis.min() / per_axis))
    echo = tissue * depth * (1.0 - acq.contrast * soft)
    if acq.rim > 0:
        edge = ndimage.gaussian_filter(soft * (1 - soft) * 4, 0.7)
        echo = echo + acq.rim * 0.35 * edge
    sigma = tuple(acq.speckle_sigma * per_axis.min() / per_axis)
    re = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
    im = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
    speckle = np.hypot(re, im)
    speckle = 1.0 + acq.speckle_strength * (speckle / (speckle.mean() + 1e-8) - 1.0)
    img = echo * speckle
    if acq.banding > 0:
        rows = np.arange(size, dtype=np.float64)[None, :, None]
        img = img + acq.banding * np.sin(2 * np.pi * rows / BAND_PERIOD + rng.uniform(0, 2 * np.pi))
    img = acq.gain * img + acq.offset
    if acq.mark > 0:
        side = max(2, int(round(MARK_SIDE * size)))
        img[1:1 + side, 1:1 + side, 1:1 + side] += acq.mark
    return np.clip(img, 0.0, 1.0)
