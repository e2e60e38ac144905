"""Readers for the layouts users bring; each returns the manifest contract (see `manifest`).

- ``fairseg``: Harvard-FairSeg, one NPZ per patient (``slo_fundus``; mask ``disc_cup`` or
  ``disc_cup_mask`` with 0 background, -1 rim, -2 cup), scalar attributes stored in each NPZ,
  split by ``train.txt`` / ``val.txt`` / ``test.txt`` (or folders Training/Validation/Test).
- ``tusc``: TUSC thyroid ultrasound as FairMedFM preprocesses it, ``metadata.csv`` with
  ``imagePath``, ``labelPath``, ``sexBinary``; mask foreground 255.
- ``fives``: FIVES fundus vessels, ``{train,test}/Original/*.png`` and
  ``{train,test}/Ground truth/*.png``, plus an optional attribute table (CSV or XLSX).
- ``nifti``: NIfTI volumes (``images/`` and ``labels/`` with matching names) sliced to 2D, or
  (``volumes=True``) one 3-D sample per volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from applefair.data.manifest import assign_splits, finish, resolve_paths
from applefair.errors import InputError

FAIRSEG_TARGETS = {"cup": [-2], "disc": [-1, -2], "rim": [-1]}
FAIRSEG_SPLIT_DIRS = {"train": ("Training", "train"), "val": ("Validation", "val"), "test": ("Test", "test")}


def _split_lists(root: Path) -> dict[str, str]:
    """name -> split from train.txt / val.txt / test.txt (in the root or in lists/)."""
    out: dict[str, str] = {}
    for folder in (root, root / "lists"):
        for split in ("train", "val", "test"):
            f = folder / f"{split}.txt"
            if f.is_file():
                for line in f.read_text().split():
                    out[Path(line.strip()).name.split(".")[0]] = split
    return out


def read_fairseg(path: str | os.PathLike, target: str = "cup", split_fractions=None, seed: int = 0,
                 **load) -> pd.DataFrame:
    """Harvard-FairSeg folder -> manifest. `target` picks the binary mask: cup, disc (rim+cup) or rim."""
    root = Path(path)
    if target not in FAIRSEG_TARGETS:
        raise InputError(f"{root}: target '{target}' is not known (expected one of: {', '.join(FAIRSEG_TARGETS)})")
    files = sorted(root.rglob("*.npz"))
    if not files:
        raise InputError(f"{root}: no .npz files found (expected Harvard-FairSeg data_XXXXX.npz files)")
    lists = _split_lists(root)
    rows = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                keys = set(z.files)
                if "slo_fundus" not in keys:
                    raise InputError(f"{f}: key 'slo_fundus' missing (keys: {', '.join(sorted(keys))})")
                mask_key = "disc_cup" if "disc_cup" in keys else "disc_cup_mask" if "disc_cup_mask" in keys else None
                if mask_key is None:
                    raise InputError(f"{f}: no mask key 'disc_cup' or 'disc_cup_mask' "
                                     f"(keys: {', '.join(sorted(keys))})")
                attrs = {k: _scalar(z[k]) for k in sorted(keys - {"slo_fundus", mask_key}) if z[k].size == 1}
        except (OSError, ValueError) as exc:
            raise InputError(f"{f}: unreadable NPZ ({exc})") from None
        sid = f.name[: -len(".npz")]
        split = lists.get(sid) or _split_from_dirs(f, root)
        rows.append({"id": sid, "image": str(f.relative_to(root)), "mask": str(f.relative_to(root)),
                     "image_key": "slo_fundus", "mask_key": mask_key, "split": split, **attrs})
        if split is None and split_fractions is None:
            raise InputError(f"{f}: no split for '{sid}' (expected it in train.txt/val.txt/test.txt or under "
                             "Training/Validation/Test; or give split_fractions)")
    frame = pd.DataFrame(rows)
    if split_fractions is not None:
        frame["split"] = assign_splits(frame["id"], split_fractions, seed)
    frame["image_path"] = frame["mask_path"] = [str(f.resolve()) for f in files]
    load = {"foreground": FAIRSEG_TARGETS[target], **load}
    return finish(frame, root, load, fmt="fairseg")


def _split_from_dirs(f: Path, root: Path) -> str | None:
    parts = {p.lower() for p in f.relative_to(root).parts[:-1]}
    for split, names in FAIRSEG_SPLIT_DIRS.items():
        if any(n.lower() in parts for n in names):
            return split
    return None


def _scalar(a: np.ndarray):
    v = a.reshape(-1)[0]
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") else v


def read_tusc(path: str | os.PathLike, image_col: str = "imagePath", mask_col: str = "labelPath",
              patient_col: str | None = None, split_fractions=(0.6, 0.2, 0.2), seed: int = 0, **load) -> pd.DataFrame:
    """FairMedFM-style ``metadata.csv`` -> manifest (mask foreground 255 unless told otherwise).

    Without a ``split`` column, splits are drawn by a hash of `patient_col` (all frames of a
    clip/patient in one split; default: a column named patient/patientId/clip if present, else the image).
    """
    p = Path(path)
    csv = p / "metadata.csv" if p.is_dir() else p
    if not csv.is_file():
        raise InputError(f"{csv}: metadata.csv not found (expected TUSC as FairMedFM preprocesses it)")
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{csv}: not a readable CSV ({exc})") from None
    missing = [c for c in (image_col, mask_col) if c not in frame.columns]
    if missing:
        raise InputError(f"{csv}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")
    if len(frame) == 0:
        raise InputError(f"{csv}: no rows")
    root = csv.parent
    frame["image_path"] = resolve_paths(frame[image_col], root, csv, image_col)
    frame["mask_path"] = resolve_paths(frame[mask_col], root, csv, mask_col)
    if "id" not in frame.columns:
        frame.insert(0, "id", [Path(x).as_posix().rsplit(".", 1)[0].replace("/", "_") for x in frame[image_col]])
    if "sexBinary" in frame.columns and "sex" not in frame.columns:
        frame["sex"] = frame["sexBinary"]
    if "split" not in frame.columns:
        if patient_col is None:
            patient_col = next((c for c in ("patient", "patientId", "patient_id", "clip", "clipId")
                                if c in frame.columns), None)
        keys = frame[patient_col] if patient_col else frame["id"]
        frame["split"] = assign_splits(keys, split_fractions, seed)
    frame["split"] = frame["split"].str.lower().replace({"training": "train", "valid": "val", "validation": "val"})
    return finish(frame, csv, {"foreground": [255], **load}, fmt="tusc")


def read_fives(path: str | os.PathLike, table: str | os.PathLike | None = None, val_fraction: float = 0.0,
               seed: int = 0, **load) -> pd.DataFrame:
    """FIVES folder -> manifest. Adds ``disease`` from the file name (1_A.png: A AMD, D DR, G glaucoma,
    N normal) and joins an attribute table (a CSV/XLSX in the root, or `table`) on the image name.
    """
    root = Path(path)
    rows = []
    for split_dir in ("train", "test"):
        base = _child(root, split_dir)
        if base is None:
            continue
        img_dir, gt_dir = _child(base, "Original"), _child(base, "Ground truth") or _child(base, "GroundTruth")
        if img_dir is None or gt_dir is None:
            raise InputError(f"{base}: expected folders 'Original' and 'Ground truth'")
        for f in sorted(img_dir.iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
                continue
            m = next((c for c in gt_dir.glob(f.stem + ".*")), None)
            if m is None:
                raise InputError(f"{f}: no ground truth '{gt_dir.name}/{f.stem}.*' for this image")
            code = f.stem.split("_")[-1].upper()
            rows.append({"id": f"{split_dir}_{f.stem}", "name": f.name, "image": str(f.relative_to(root)),
                         "mask": str(m.relative_to(root)), "split": split_dir,
                         "disease": {"A": "AMD", "D": "DR", "G": "glaucoma", "N": "normal"}.get(code, "")})
    if not rows:
        raise InputError(f"{root}: no FIVES images found (expected train/Original and train/Ground truth)")
    frame = pd.DataFrame(rows)
    if val_fraction > 0:
        train = frame["split"] == "train"
        frame.loc[train, "split"] = assign_splits(frame.loc[train, "id"], (1 - val_fraction, val_fraction, 0), seed)
    frame["image_path"] = resolve_paths(frame["image"], root, root, "image")
    frame["mask_path"] = resolve_paths(frame["mask"], root, root, "mask")
    tables = [Path(table)] if table else sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".xlsx"))
    for t in tables:
        frame = _join_table(frame, t)
    return finish(frame, root, load, fmt="fives")


def _child(folder: Path, name: str) -> Path | None:
    """A sub-folder by case-insensitive name."""
    if not folder.is_dir():
        return None
    return next((c for c in folder.iterdir() if c.is_dir() and c.name.lower() == name.lower()), None)


def _join_table(frame: pd.DataFrame, table: Path) -> pd.DataFrame:
    """Left-join an attribute table on whichever of its columns holds the image names (or stems)."""
    if not table.is_file():
        raise InputError(f"{table}: attribute table not found")
    try:
        t = pd.read_excel(table, dtype=str) if table.suffix.lower() == ".xlsx" else pd.read_csv(table, dtype=str)
    except ImportError:
        raise InputError(f"{table}: reading .xlsx needs openpyxl (pip install openpyxl) or save it as CSV") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{table}: unreadable table ({exc})") from None
    names = set(frame["name"]) | {n.rsplit(".", 1)[0] for n in frame["name"]}
    key = next((c for c in t.columns if t[c].astype(str).str.strip().isin(names).mean() > 0.5), None)
    if key is None:
        raise InputError(f"{table}: no column holds the image names (e.g. 1_A.png); columns: {', '.join(t.columns)}")
    t = t.copy()
    t["_stem"] = t[key].astype(str).str.strip().str.rsplit(".", n=1).str[0]
    if t["_stem"].duplicated().any():
        dup = t["_stem"][t["_stem"].duplicated()].iloc[0]
        raise InputError(f"{table}: column {key}: image '{dup}' listed twice")
    t = t.drop(columns=[key]).rename(columns=lambda c: c.strip().lower().replace(" ", "_") if c != "_stem" else c)
    t = t[[c for c in t.columns if c not in frame.columns or c == "_stem"]]
    frame = frame.assign(_stem=frame["name"].str.rsplit(".", n=1).str[0]).merge(t, on="_stem", how="left")
    return frame.drop(columns=["_stem"])


def read_nifti(path: str | os.PathLike, axis: int = 2, min_foreground: int = 0, table: str | None = None,
               split_fractions=(0.6, 0.2, 0.2), seed: int = 0, volumes: bool = False, **load) -> pd.DataFrame:
    """NIfTI folder (``images/X.nii.gz`` + ``labels/X.nii.gz``) -> one row per 2D slice along `axis`, or with
    `volumes` one row per volume (a 3-D sample, no ``slice`` column; its spacing comes from the header).

    Slices (volumes) with fewer than `min_foreground` mask pixels (voxels) are dropped (reads each label
    volume once).
    Attributes come from ``attributes.csv`` (column ``id`` = volume name) or `table`; splits are by
    volume (a ``split`` column there, else a hash of the volume id), so no patient spans two splits.
    """
    import nibabel as nib

    root = Path(path)
    img_dir, lab_dir = _child(root, "images") or _child(root, "imagesTr"), _child(root, "labels") or _child(
        root, "labelsTr")
    if img_dir is None or lab_dir is None:
        raise InputError(f"{root}: expected folders 'images' and 'labels' holding .nii/.nii.gz volumes")
    vols = sorted(f for f in img_dir.iterdir() if f.name.endswith((".nii", ".nii.gz")))
    if not vols:
        raise InputError(f"{img_dir}: no .nii/.nii.gz volumes")
    attrs = _volume_table(Path(table) if table else root / "attributes.csv")
    rows = []
    for v in vols:
        vid = v.name.split(".")[0]
        lab = next((c for c in lab_dir.iterdir() if c.name.split(".")[0] == vid), None)
        if lab is None:
            raise InputError(f"{v}: no label volume '{lab_dir.name}/{vid}.nii(.gz)'")
        try:
            ih, lh = nib.load(v), nib.load(lab)
        except Exception as exc:  # nibabel raises several unrelated types for bad files
            raise InputError(f"{v}: unreadable NIfTI ({type(exc).__name__}: {exc})") from None
        if ih.shape[:3] != lh.shape[:3] or len(ih.shape) < 3:
            raise InputError(f"{v}: image shape {ih.shape} differs from label shape {lh.shape} ({lab})")
        if not 0 <= axis < 3:
            raise InputError(f"axis={axis}: expected 0, 1 or 2")
        extra = attrs.get(vid, {})
        if volumes:
            if min_foreground <= 0 or int((np.asarray(lh.dataobj) != 0).sum()) >= min_foreground:
                rows.append({"id": vid, "volume": vid, "image": str(v.relative_to(root)),
                             "mask": str(lab.relative_to(root)), **extra})
            continue
        keep = range(ih.shape[axis])
        if min_foreground > 0:
            counts = (np.asarray(lh.dataobj) != 0).sum(axis=tuple(a for a in range(3) if a != axis))
            keep = [k for k in keep if counts[k] >= min_foreground]
        for k in keep:
            rows.append({"id": f"{vid}_s{k:04d}", "volume": vid, "image": str(v.relative_to(root)),
                         "mask": str(lab.relative_to(root)), "slice": int(k), "axis": axis, **extra})
    if not rows:
        raise InputError(f"{root}: no volume has {min_foreground} foreground voxels (min_foreground)")
    frame = pd.DataFrame(rows)
    frame["image_path"] = resolve_paths(frame["image"], root, root, "image")
    frame["mask_path"] = resolve_paths(frame["mask"], root, root, "mask")
    if "split" not in frame.columns or (frame["split"] == "").any():
        by_volume = dict(zip(frame["volume"].unique(), assign_splits(frame["volume"].unique(), split_fractions, seed),
                             strict=True))
        frame["split"] = frame["volume"].map(by_volume)
    return finish(frame, root, load, fmt="nifti")


def _volume_table(table: Path) -> dict[str, dict]:
    if not table.is_file():
        return {}
    t = pd.read_csv(table, dtype=str, keep_default_na=False)
    if "id" not in t.columns:
        raise InputError(f"{table}: missing column id (the volume name without .nii.gz)")
    return {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in t.to_dict("records")}
