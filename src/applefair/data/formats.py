"""`load_dataset`: the one entry point from a user's path to the manifest contract.

Every command with ``--data`` calls it. The format is named (``csv``, ``fairseg``, ``tusc``,
``fives``, ``nifti``) or detected from what the path holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pandas as pd

from applefair.data.manifest import read_manifest, usable_path
from applefair.data.readers import read_fairseg, read_fives, read_nifti, read_tusc
from applefair.engine.runfolder import MANIFEST
from applefair.errors import InputError

READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "csv": read_manifest,
    "fairseg": read_fairseg,
    "tusc": read_tusc,
    "fives": read_fives,
    "nifti": read_nifti,
}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the layout of `path`; InputError listing what was looked for if nothing fits."""
    p = usable_path(path)
    if not p.exists():
        raise InputError(f"{p}: not found (expected a manifest CSV or a dataset folder)")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise InputError(f"{p}: expected a .csv manifest or a dataset folder")
        with open(p, encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
        return "tusc" if "imagePath" in header and "labelPath" in header else "csv"
    names = {c.name.lower() for c in p.iterdir()}
    if MANIFEST in names:
        return "csv"
    if "metadata.csv" in names:
        return "tusc"
    if {"images", "labels"} <= names or {"imagestr", "labelstr"} <= names:
        return "nifti"
    for split in ("train", "test"):
        sub = p / split if (p / split).is_dir() else None
        if sub is not None and any(c.name.lower() == "original" for c in sub.iterdir()):
            return "fives"
    if next(p.rglob("*.npz"), None) is not None:
        return "fairseg"
    raise InputError(f"{p}: cannot tell the dataset format (looked for manifest.csv, metadata.csv, images/+labels/, "
                     "train/Original, *.npz); give --format " + "|".join(READERS))


def load_dataset(path: str | os.PathLike, format: str | None = None, **options) -> pd.DataFrame:
    """Read any supported layout into the manifest contract (paths, ids, splits checked; pixels are
    checked by `validate_samples`). `options` go to the reader (see each ``read_*`` function)."""
    usable_path(path)
    fmt = (format or "").strip().lower() or detect_format(path)
    if fmt not in READERS:
        raise InputError(f"format '{format}' is not known (expected one of: {', '.join(READERS)})")
    return READERS[fmt](path, **options)


def parse_key_values(items: list[str] | None, flag: str, example: str) -> dict:
    """CLI ``KEY=VALUE`` pairs -> dict; values parsed as YAML (numbers, lists, mappings), else kept as text."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"{flag} '{item}': expected KEY=VALUE (e.g. {example})")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def parse_options(items: list[str] | None) -> dict:
    """CLI ``--option key=value`` pairs -> dict; values parsed as YAML (numbers, lists, mappings)."""
    return parse_key_values(items, "option", "foreground=255 or target=disc")
