"""Tiny datasets written in the exact on-disk layouts the readers accept (shared by tests/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def disc(size: int = 32, r: int = 8, cx: int = 16, cy: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def image_of(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.6 - 0.3 * mask + 0.05 * rng.standard_normal(mask.shape), 0, 1)


def write_csv_dataset(root: Path, n: int = 12, fmt: str = "png") -> Path:
    """manifest.csv + images in `fmt` (png, jpg, tif, npy) + binary PNG masks; attributes sex, age."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        m = disc(r=5 + i % 5)
        img = image_of(m, i)
        name = f"img/s{i}.{fmt}"
        if fmt == "npy":
            np.save(root / name, img.astype(np.float32))
        elif fmt == "tif":
            import tifffile

            tifffile.imwrite(root / name, (img * 65535).astype(np.uint16))
        else:
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name)
        Image.fromarray(m.astype(np.uint8) * 255).save(root / f"msk/s{i}.png")
        rows.append({"image": name, "mask": f"msk/s{i}.png", "split": ["train", "val", "test"][i % 3],
                     "sex": "F" if i % 2 else "M", "age": str(30 + 5 * i)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def write_fairseg(root: Path, n: int = 6, mask_key: str = "disc_cup", use_lists: bool = True) -> Path:
    """data_XXXXX.npz with slo_fundus, disc_cup(_mask) (0/-1/-2) and scalar attributes; train/test lists."""
    folder = root if use_lists else root / "Training"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        d = disc(r=9).astype(np.int8) * -1
        d[disc(r=4)] = -2
        np.savez(folder / f"data_{i:05d}.npz", slo_fundus=(image_of(d != 0, i) * 255).astype(np.uint8),
                 **{mask_key: d}, age=np.array(365.25 * (40 + 8 * i)), gender=np.array(i % 2),
                 race=np.array(i % 3), ethnicity=np.array(-1 if i == 0 else 0))
        names.append(f"data_{i:05d}.npz")
    if use_lists:
        (root / "train.txt").write_text("\n".join(names[: n - 2]) + "\n")
        (root / "test.txt").write_text("\n".join(n.replace(".npz", "") for n in names[n - 2:]) + "\n")
    return root


def write_tusc(root: Path, n: int = 8) -> Path:
    """metadata.csv (imagePath, labelPath, sexBinary, patient) + PNG frames, masks 0/255."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        m = disc(r=6)
        Image.fromarray((image_of(m, i) * 255).astype(np.uint8)).save(root / f"images/{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / f"labels/{i}.png")
        rows.append({"imagePath": f"images/{i}.png", "labelPath": f"labels/{i}.png",
                     "sexBinary": "F" if i % 2 else "M", "patient": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def write_fives(root: Path, n: int = 4, table: bool = True) -> Path:
    """{train,test}/Original/*.png (RGB) and {train,test}/Ground truth/*.png + an attribute CSV."""
    rows = []
    for split in ("train", "test"):
        (root / split / "Original").mkdir(parents=True, exist_ok=True)
        (root / split / "Ground truth").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{i + (0 if split == 'train' else 100)}_{'ADGN'[i % 4]}.png"
            m = disc(r=3 + i)
            rgb = np.stack([image_of(m, i)] * 3, -1)
            Image.fromarray((rgb * 255).astype(np.uint8)).save(root / split / "Original" / name)
            Image.fromarray(np.stack([m.astype(np.uint8) * 255] * 3, -1)).save(root / split / "Ground truth" / name)
            rows.append({"Image": name, "Age": str(30 + 10 * i), "Sex": "F" if i % 2 else "M"})
    if table:
        pd.DataFrame(rows).to_csv(root / "attributes.csv", index=False)
    return root


def write_nifti(root: Path, n: int = 3, depth: int = 5) -> Path:
    """images/v{i}.nii.gz + labels/v{i}.nii.gz (32x32xdepth) + attributes.csv (id, sex)."""
    import nibabel as nib

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lab = np.zeros((32, 32, depth), np.uint8)
        for k in range(1, depth - 1):
            lab[..., k] = disc(r=3 + k)
        vol = (-500 + 1000 * np.stack([image_of(lab[..., k] > 0, k) for k in range(depth)], -1)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"images/v{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / f"labels/v{i}.nii.gz")
    pd.DataFrame({"id": [f"v{i}" for i in range(n)], "sex": ["F", "M", "F"][:n]}).to_csv(
        root / "attributes.csv", index=False)
    return root
