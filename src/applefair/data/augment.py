"""Augmentation of (image, mask) batches, shared by every trainer: per-batch flips drawn from the
trainer's generator, and per-sample MONAI transforms seeded once (so a resumed run redraws the same)."""

from __future__ import annotations

import math

import torch

from applefair.errors import InputError

AUGMENTATIONS = ("hflip", "vflip", "rotate", "intensity")


def parse_augment(augment: bool | str) -> tuple[str, ...]:
    """Augmentation names from a TrainConfig value (True is the legacy per-batch horizontal flip)."""
    if augment is True:
        return ("batch_hflip",)
    if not augment or str(augment).strip().lower() in ("none", "false", "0"):
        return ()
    ops = tuple(a.strip() for a in str(augment).split(",") if a.strip())
    bad = [a for a in ops if a not in AUGMENTATIONS]
    if bad:
        raise InputError(f"augmentation '{bad[0]}' is not known (expected a comma list of: {', '.join(AUGMENTATIONS)})")
    return ops


def augment_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips (per batch; vertical flips would break depth attenuation)."""
    if torch.rand(1, generator=g).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def sample_augmenter(ops: tuple[str, ...], seed: int):
    """A MONAI dictionary transform over {"image", "mask"} (C, H, W) doing `ops`, seeded."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ("image", "mask")
    steps = []
    if "hflip" in ops:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=1))
    if "vflip" in ops:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    if "rotate" in ops:
        steps.append(RandRotated(keys, range_x=math.pi / 12, prob=0.5, mode=("bilinear", "nearest"),
                                 padding_mode="border", keep_size=True))
    if "intensity" in ops:
        steps += [RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
                  RandScaleIntensityd("image", factors=0.1, prob=0.3),
                  RandShiftIntensityd("image", offsets=0.05, prob=0.3)]
    return Compose(steps).set_random_state(seed=seed % (2**32)) if steps else None


def apply_augmenter(aug, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a sample augmenter over a batch; images stay in [0, 1], masks binary."""
    if aug is None:
        return x, y
    outs = [aug({"image": xi, "mask": yi}) for xi, yi in zip(x, y, strict=True)]
    xs = torch.stack([torch.as_tensor(o["image"]).as_subclass(torch.Tensor) for o in outs]).clamp(0, 1)
    ys = torch.stack([torch.as_tensor(o["mask"]).as_subclass(torch.Tensor) for o in outs])
    return xs.to(x.dtype), (ys > 0.5).to(y.dtype)
