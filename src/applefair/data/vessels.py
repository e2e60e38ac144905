"""Synthetic fundus-like vessel trees (a FIVES / Harvard-FairSeg analogue).

Each image is the green channel of a colour fundus photograph as a segmentor sees it: a
circular field of view with vignetting, a bright optic disc, a darker macula, and a vessel
tree growing from the disc (main arcades that bend towards the macula, side branches whose
calibre shrinks by generation). The binary mask is the vessel tree.

The sensitive attribute is ``age`` in years (continuous). The majority is 20-59 years old,
the minority 60-89; a GroupSpec such as ``age:0,60,inf`` bins it. Bias mechanisms (the
minority is the older group unless said otherwise):

- ``contrast`` (difficulty-type): media opacity (cataract) lowers vessel contrast, blurs the
  image and adds noise. The information is really weaker.
- ``gain`` (shortcut-type): the older group's camera has another calibration (brighter, with a
  compressed dynamic range); the vessels are as visible once intensities are normalised.
- ``artifact`` (shortcut-type): the majority's camera sharpens edges, which leaves a thin bright
  halo along every vessel wall; the minority's images lack it. A model that uses the halo
  finds weaker walls in the minority.
- ``anatomy`` (shortcut-type, a shift of the anatomy distribution): vessels are narrower in the
  older group (arteriolar narrowing with age), so a model fitted to the majority's calibre
  under-segments them.
- ``spurious`` (shortcut-type, a cue present but misused): the older group's camera has a mild
  calibration (gain ``1 - 0.2 strength``, offset ``0.2 strength``); in the training split only,
  their masks are traced wider than the reference (see `applefair.data.synthetic`).
- ``none``: both groups drawn the same way (a control).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BIASES = ("contrast", "gain", "artifact", "anatomy", "spurious", "none")


@dataclass(frozen=True)
class FundusLook:
    """Acquisition and anatomy parameters of one group."""

    contrast: float = 0.45  # fractional darkening at a vessel's centre line
    blur: float = 0.5  # Gaussian blur (px at 96 px) of the whole image
    noise: float = 0.02  # additive Gaussian noise (std)
    gain: float = 1.0
    offset: float = 0.0
    halo: float = 0.0  # brightness of an edge-enhancement halo along vessel walls
    calibre: float = 1.0  # multiplies every vessel radius


def looks(bias: str, strength: float = 1.0) -> dict[str, FundusLook]:
    """Per-group look ('young' majority, 'old' minority) for a bias mechanism."""
    base, s = FundusLook(), float(strength)
    if bias == "none":
        return {"young": base, "old": base}
    if bias == "contrast":
        return {"young": base, "old": FundusLook(contrast=0.45 * (1 - 0.55 * s), blur=0.5 + 0.9 * s,
                                                 noise=0.02 + 0.035 * s)}
    if bias == "gain":
        return {"young": base, "old": FundusLook(gain=1.0 - 0.45 * s, offset=0.45 * s)}
    if bias == "artifact":
        return {"young": FundusLook(halo=0.5 * s), "old": base}
    if bias == "anatomy":
        return {"young": base, "old": FundusLook(calibre=max(0.2, 1.0 - 0.45 * s))}
    if bias == "spurious":
        return {"young": base, "old": FundusLook(gain=1.0 - 0.2 * s, offset=0.2 * s)}
    raise ValueError(f"bias '{bias}' is not known for vessels (expected one of: {', '.join(BIASES)})")


def vessel_tree(rng: np.random.Generator, size: int, calibre: float = 1.0,
                side: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Grow a vessel tree; returns (distance to the nearest centre line, radius there, disc centre).

    A pixel is vessel where distance <= radius. Branches are random walks whose direction is
    pulled towards the macula (the arcades) and whose radius shrinks by 0.7 per generation.
    """
    scale = size / 96.0
    side = int(rng.choice([-1, 1])) if side is None else side
    c = (size - 1) / 2.0
    fov = 0.46 * size
    disc = (c + rng.normal(0, 0.02 * size), c + side * 0.27 * size)  # (y, x)
    radius_map = np.zeros((size, size), dtype=np.float64)
    r0 = 1.8 * scale * calibre
    macula_dir = np.pi if side > 0 else 0.0  # the macula lies towards the image centre
    stack = []
    for vert in (-1, 1):  # two arcades (temporal) and two nasal trunks
        stack.append((disc[0], disc[1], macula_dir - vert * rng.uniform(0.9, 1.3), r0, 0, 1.0, vert))
        stack.append((disc[0], disc[1], macula_dir + np.pi + vert * rng.uniform(0.7, 1.1), r0 * 0.8, 0, 0.6, vert))
    steps_done = 0
    while stack and steps_done < 20000:
        y, x, ang, r, gen, budget, vert = stack.pop()
        length = int(budget * (0.95 - 0.2 * gen) * size)
        for step in range(max(1, length)):
            pull = np.angle(np.exp(1j * (macula_dir - ang))) if gen == 0 and budget == 1.0 else 0.0
            ang += rng.normal(0, 0.07) + 0.012 * pull * (step > 0.25 * size)
            y, x = y + np.sin(ang) * 0.7, x + np.cos(ang) * 0.7
            steps_done += 1
            if np.hypot(y - c, x - c) > fov:
                break
            iy, ix = int(round(y)), int(round(x))
            radius_map[iy, ix] = max(radius_map[iy, ix], r)
            if gen < 3 and step > 3 * scale and rng.random() < 0.05 / scale and r * 0.7 >= 0.35:
                child = ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
                stack.append((y, x, child, r * 0.7, gen + 1, budget * rng.uniform(0.4, 0.8), vert))
                r *= 0.92
    centre = radius_map > 0
    dist, (iy, ix) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return dist, radius_map[iy, ix], disc


def render_fundus(rng: np.random.Generator, size: int, look: FundusLook) -> tuple[np.ndarray, np.ndarray]:
    """One (image in [0, 1], binary vessel mask) pair under `look`."""
    scale = size / 96.0
    dist, rad, disc = vessel_tree(rng, size, calibre=look.calibre)
    mask = dist <= np.maximum(rad, 0.5) * (rad > 0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2.0
    rr = np.hypot(yy - c, xx - c) / (0.46 * size)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 12, mode="wrap")
    back = 0.42 + 0.04 * field / (field.std() + 1e-8)
    back = back * (1.0 - 0.35 * rr**2)
    back += 0.35 * np.exp(-(((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / (2 * (0.05 * size) ** 2)))
    mac = (c + rng.normal(0, 0.02 * size), c - np.sign(disc[1] - c) * 0.05 * size)
    back -= 0.08 * np.exp(-(((yy - mac[0]) ** 2 + (xx - mac[1]) ** 2) / (2 * (0.08 * size) ** 2)))
    width = np.maximum(rad, 0.5)
    profile = np.exp(-0.5 * (dist / (0.8 * width)) ** 2) * (rad > 0)
    img = back * (1.0 - look.contrast * profile)
    if look.halo > 0:
        ring = np.exp(-0.5 * ((dist - width - 0.5) / 0.6) ** 2) * (rad > 0)
        img = img + look.halo * 0.3 * ring
    img = ndimage.gaussian_filter(img, look.blur * scale)
    img = img + look.noise * rng.standard_normal((size, size))
    img = np.where(rr <= 1.0, img, 0.03)
    img = look.gain * img + look.offset
    return np.clip(img, 0.0, 1.0), mask


def draw_age(rng: np.random.Generator, old: bool) -> float:
    """Age in years (one decimal): majority 20-59.9, minority 60-89.9."""
    return float(np.floor((rng.uniform(60.0, 90.0) if old else rng.uniform(20.0, 60.0)) * 10) / 10)
