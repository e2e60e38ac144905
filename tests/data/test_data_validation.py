"""Bad data is refused with one line naming file, row and column (exit code 2, nothing written)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_fixtures import write_csv_dataset
from PIL import Image
from typer.testing import CliRunner

from applefair.data import GroupSpec, load_dataset, validate_samples
from applefair.errors import InputError


@pytest.fixture()
def ds(tmp_path):
    path = write_csv_dataset(tmp_path / "d", n=6)
    return path, pd.read_csv(path, dtype=str)


def _edit(path, frame):
    frame.to_csv(path, index=False)
    return path


def test_clean_dataset_passes_and_reports_stats(ds):
    path, _ = ds
    stats = validate_samples(load_dataset(path), GroupSpec.parse("sex"), need_groups=("train",))
    assert len(stats) == 6 and (stats["height"] == 32).all() and (stats["foreground"] > 0).all()


@pytest.mark.parametrize("case, pattern", [
    ("missing_file", r"row 3, column mask: file 'msk/nope.png' not found"),
    ("escape", r"row 2, column image: path '../outside.png' escapes the dataset root"),
    ("duplicate", r"row 3, column id: duplicate id 's0'"),
    ("bad_split", r"row 2, column split: 'training'"),
    ("missing_column", r"missing column\(s\) mask"),
    ("bad_type", r"row 2, column image: 'img/s0.txt' is not a supported file type"),
])
def test_path_level_errors(ds, case, pattern):
    path, m = ds
    if case == "missing_file":
        m.loc[1, "mask"] = "msk/nope.png"
    elif case == "escape":
        (path.parent.parent / "outside.png").write_bytes(b"")
        m.loc[0, "image"] = "../outside.png"
    elif case == "duplicate":
        m["id"] = ["s0", "s0", "a", "b", "c", "d"]
    elif case == "bad_split":
        m.loc[0, "split"] = "training"
    elif case == "missing_column":
        m = m.drop(columns=["mask"])
    elif case == "bad_type":
        (path.parent / "img/s0.txt").write_text("x")
        m.loc[0, "image"] = "img/s0.txt"
    with pytest.raises(InputError, match=pattern) as err:
        load_dataset(_edit(path, m))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case, pattern", [
    ("shape", r"row 4 \(id s2\), column mask: shape \(16, 16\) differs from the image's \(32, 32\)"),
    ("nonbinary", r"row 4 \(id s2\), column mask: .*mask is not binary \(3 values: 0, 1, 2\)"),
    ("nan", r"row 4 \(id s2\), column image: .*NaN or Inf"),
    ("unreadable", r"row 4 \(id s2\), column image: .*unreadable"),
])
def test_pixel_level_errors(ds, case, pattern):
    path, m = ds
    root = path.parent
    if case == "shape":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "msk/s2.png")
    elif case == "nonbinary":
        Image.fromarray(np.arange(32 * 32).reshape(32, 32).astype(np.uint8) % 3).save(root / "msk/s2.png")
    elif case == "nan":
        arr = np.zeros((32, 32), np.float32)
        arr[3, 3] = np.nan
        np.save(root / "img/s2.npy", arr)
        m.loc[2, "image"] = "img/s2.npy"
    elif case == "unreadable":
        (root / "img/s2.png").write_bytes(b"not a png")
    frame = load_dataset(_edit(path, m))
    with pytest.raises(InputError, match=pattern) as err:
        validate_samples(frame)
    assert "\n" not in str(err.value)


def test_group_errors(ds):
    path, m = ds
    frame = load_dataset(path)
    with pytest.raises(InputError, match="attribute column 'race' not found"):
        validate_samples(frame, GroupSpec("race"))
    m["sex"] = ["F", "M", "F", "F", "M", "F"]  # train rows are 0 and 3: both F
    frame = load_dataset(_edit(path, m))
    with pytest.raises(InputError, match="split 'train' has 1 known group"):
        validate_samples(frame, GroupSpec("sex").fit(frame), need_groups=("train",))


def test_cli_bad_data_exits_2_without_traceback(ds, tmp_path):
    from applefair.cli import app, main

    path, m = ds
    m.loc[1, "mask"] = "msk/nope.png"
    _edit(path, m)
    res = CliRunner().invoke(app, ["data", "inspect", str(path), "--quiet"])
    assert isinstance(res.exception, InputError)
    import sys

    argv = sys.argv
    sys.argv = ["applefair", "data", "inspect", str(path), "--quiet"]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = argv
    assert exit_.value.code == 2
