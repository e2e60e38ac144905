"""Pixel-level validation of a manifest, before anything is written.

`load_dataset` checks paths, ids and splits; `validate_samples` opens every sample with the
same loader training uses and stops at the first problem with a one-line error naming the
file, the manifest row and the column: unreadable files, image/mask shape mismatch, a
non-binary mask without a label mapping, NaN/Inf pixels. It also checks that group-aware
splits hold at least two groups, and returns per-sample statistics for `data inspect`.
"""

from __future__ import annotations

import pandas as pd

from applefair.data.groups import GroupSpec
from applefair.data.loaders import LoadOptions, is_volume_row, load_part
from applefair.data.volumes import load_volume
from applefair.engine.progress import progress_bar
from applefair.errors import InputError


def validate_samples(frame: pd.DataFrame, groups: GroupSpec | None = None, need_groups: tuple[str, ...] = (),
                     quiet: bool = True, limit: int | None = None) -> pd.DataFrame:
    """Open every sample (or the first `limit`); return id, split, height, width (and depth for volumes),
    foreground fraction.

    `need_groups` names the splits that must hold at least two known groups (e.g. ("train",)
    for a group-aware method).
    """
    source = frame.attrs.get("source", "manifest")
    if groups is not None:
        for col in groups.attributes:
            if col not in frame.columns:
                raise InputError(f"{source}: attribute column '{col}' not found "
                                 f"(columns: {', '.join(map(str, frame.columns))})")
        if need_groups:
            groups.require_groups(frame, need_groups, source=str(source))
    opts = LoadOptions.from_any(frame.attrs.get("load"))
    rows = frame.to_dict("records")[: limit or None]
    stats = []
    with progress_bar(quiet) as bar:
        task = bar.add_task("check samples", total=len(rows), info="")
        for i, row in enumerate(rows):
            arrays = {}
            if is_volume_row(row):  # a whole volume: image and mask read together (shape and spacing agree)
                try:
                    arrays["image"], arrays["mask"], _ = load_volume(row, opts)
                except InputError as exc:
                    raise InputError(f"{source}: row {i + 2} (id {row['id']}), columns image/mask: {exc}") from None
            for part in ("image", "mask"):
                try:
                    arrays[part] = arrays[part] if part in arrays else load_part(row, part, opts)
                except InputError as exc:
                    raise InputError(f"{source}: row {i + 2} (id {row['id']}), column {part}: {exc}") from None
            img, msk = arrays["image"], arrays["mask"]
            if img.shape != msk.shape:
                raise InputError(f"{source}: row {i + 2} (id {row['id']}), column mask: shape {msk.shape} differs "
                                 f"from the image's {img.shape} ({row['mask_path']})")
            stats.append({"id": row["id"], "split": row["split"], "height": img.shape[-2], "width": img.shape[-1],
                          **({"depth": img.shape[0]} if img.ndim == 3 else {}),
                          "foreground": float(msk.mean()), "intensity_mean": float(img.mean())})
            bar.update(task, advance=1)
    return pd.DataFrame(stats)
