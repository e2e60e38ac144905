"""Atomic writes, staged run folders and the synthetic manifest round trip."""

from __future__ import annotations

import pandas as pd
import pytest

from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import generate
from applefair.engine.io import staged_dir, write_text
from applefair.errors import InputError


def test_staged_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_dir(out) as stage:
            write_text(stage / "a.txt", "partial")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        with staged_dir(out):
            pass
    assert (out / "keep.txt").read_text() == "user data"


def test_generator_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", n=20, size=48, seed=5)
    b = generate(tmp_path / "b", n=20, size=48, seed=5)
    c = generate(tmp_path / "c", n=20, size=48, seed=6)
    fa, fb, fc = (pd.read_csv(p) for p in (a, b, c))
    assert fa.equals(fb)
    for rel in fa["image"]:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
    assert any((a.parent / r).read_bytes() != (c.parent / r).read_bytes() for r in fa["image"])


def test_manifest_round_trip(tmp_path):
    path = generate(tmp_path / "d", n=20, size=48, seed=1, minority_share=0.25)
    frame = read_manifest(path)
    assert {"id", "image", "mask", "split", "sex"} <= set(frame.columns)
    assert set(frame["split"]) == {"train", "val", "test"}
    assert (frame["sex"] == "F").sum() == 5
    ds = SegmentationDataset(frame, split="test")
    item = ds[0]
    assert item["image"].shape == item["mask"].shape == (1, 48, 48)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
