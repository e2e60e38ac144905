"""Every reader, on a tiny fixture in its exact layout, yields the manifest contract and samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import write_csv_dataset, write_fairseg, write_fives, write_nifti, write_tusc
from torch.utils.data import DataLoader

from applefair.data import GroupSpec, SegmentationDataset, detect_format, load_dataset
from applefair.errors import InputError

CONTRACT = {"id", "image_path", "mask_path", "split"}


def _check_samples(frame, groups=None, size=None):
    ds = SegmentationDataset(frame, groups, size=size)
    assert len(ds) == len(frame)
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert s["image"].dtype == torch.float32 and s["image"].ndim == 3 and s["image"].shape[0] == 1
        assert s["image"].shape == s["mask"].shape
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
        assert set(torch.unique(s["mask"]).tolist()) <= {0.0, 1.0}
        assert s["mask"].sum() > 0
    return ds


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "npy"])
def test_csv_manifest_reads_every_image_type(tmp_path, fmt):
    path = write_csv_dataset(tmp_path, n=6, fmt=fmt)
    assert detect_format(tmp_path) == "csv"
    frame = load_dataset(path)
    assert CONTRACT <= set(frame.columns) and {"sex", "age"} <= set(frame.columns)
    ds = _check_samples(frame, GroupSpec("sex").fit(frame))
    # the image is darker inside the disc for every container type
    s = ds[0]
    assert s["image"][s["mask"] > 0].mean() < s["image"][s["mask"] == 0].mean() - 0.15


def test_csv_custom_columns_and_split_fractions(tmp_path):
    path = write_csv_dataset(tmp_path, n=6)
    import pandas as pd

    m = pd.read_csv(path).rename(columns={"image": "img", "mask": "seg"}).drop(columns=["split"])
    m.to_csv(tmp_path / "other.csv", index=False)
    frame = load_dataset(tmp_path / "other.csv", image_col="img", mask_col="seg", split_col=None)
    assert set(frame["split"]) <= {"train", "val", "test"} and len(frame) == 6
    again = load_dataset(tmp_path / "other.csv", image_col="img", mask_col="seg", split_col=None)
    assert frame["split"].tolist() == again["split"].tolist()  # deterministic


def test_multilabel_mask_needs_mapping(tmp_path):
    from PIL import Image

    path = write_csv_dataset(tmp_path, n=3)
    lab = np.zeros((32, 32), np.uint8)
    lab[4:12, 4:12] = 1
    lab[20:28, 20:28] = 2
    for i in range(3):
        Image.fromarray(lab).save(tmp_path / f"msk/s{i}.png")
    frame = load_dataset(path)
    with pytest.raises(InputError, match="not binary"):
        SegmentationDataset(frame)[0]
    only2 = SegmentationDataset(load_dataset(path, foreground=2))[0]["mask"]
    assert int(only2.sum()) == 64 and only2[0, 24, 24] == 1 and only2[0, 8, 8] == 0
    both = SegmentationDataset(load_dataset(path, label_map={0: 0, 1: 1, 2: 1}))[0]["mask"]
    assert int(both.sum()) == 128
    assert int(SegmentationDataset(load_dataset(path, threshold=1))[0]["mask"].sum()) == 64
    with pytest.raises(InputError, match=r"value\(s\) \[2\] not in label_map"):
        SegmentationDataset(load_dataset(path, label_map={0: 0, 1: 1}))[0]


def test_fairseg_npz_lists_and_targets(tmp_path):
    root = write_fairseg(tmp_path / "fs", n=6)
    assert detect_format(root) == "fairseg"
    frame = load_dataset(root)
    assert CONTRACT <= set(frame.columns) and {"age", "gender", "race", "ethnicity"} <= set(frame.columns)
    assert (frame["split"] == "test").sum() == 2 and (frame["split"] == "train").sum() == 4
    cup = _check_samples(frame)[0]["mask"].sum()
    disc_ = SegmentationDataset(load_dataset(root, target="disc"))[0]["mask"].sum()
    rim = SegmentationDataset(load_dataset(root, format="fairseg", target="rim"))[0]["mask"].sum()
    assert cup > 0 and disc_ == cup + rim
    spec = GroupSpec.parse("age@days:0,60,inf").fit(frame)  # ages 40..80 years stored in days
    assert spec.counts(frame).sum().to_dict() == {"0-60": 3, "60+": 3, "unknown": 0}
    assert GroupSpec("ethnicity").assign(frame)[0] == -1  # -1 means unknown


def test_fairseg_alternative_mask_key_and_split_folders(tmp_path):
    root = write_fairseg(tmp_path / "fs2", n=4, mask_key="disc_cup_mask", use_lists=False)
    frame = load_dataset(root, format="fairseg")
    assert set(frame["split"]) == {"train"} and (frame["mask_key"] == "disc_cup_mask").all()
    _check_samples(frame)


def test_tusc_metadata(tmp_path):
    root = write_tusc(tmp_path / "tusc", n=8)
    assert detect_format(root) == "tusc" and detect_format(root / "metadata.csv") == "tusc"
    frame = load_dataset(root)
    assert CONTRACT <= set(frame.columns) and set(frame["sex"]) == {"F", "M"}
    per_patient = frame.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all()  # a patient never spans two splits
    _check_samples(frame, GroupSpec("sexBinary").fit(frame))


def test_fives_folders_and_table(tmp_path):
    root = write_fives(tmp_path / "fives", n=4)
    assert detect_format(root) == "fives"
    frame = load_dataset(root)
    assert len(frame) == 8 and set(frame["split"]) == {"train", "test"}
    assert set(frame["disease"]) == {"AMD", "DR", "glaucoma", "normal"}
    assert frame["age"].notna().all() and set(frame["sex"]) == {"F", "M"}
    ds = _check_samples(frame, size=16)
    assert ds[0]["image"].shape == (1, 16, 16)


def test_nifti_slices(tmp_path):
    root = write_nifti(tmp_path / "nii", n=3, depth=5)
    assert detect_format(root) == "nifti"
    frame = load_dataset(root, min_foreground=1)
    assert len(frame) == 3 * 3  # the two empty end slices of each volume are dropped
    assert (frame.groupby("volume")["split"].nunique() == 1).all()
    ds = _check_samples(frame, GroupSpec("sex").fit(frame))
    whole = load_dataset(root, intensity="window", window=[-500, 500])
    assert len(whole) == 15
    img = SegmentationDataset(whole)[1]["image"]
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert ds[0]["mask"].sum() == float(np.sum((np.mgrid[0:32, 0:32][0] - 16) ** 2
                                               + (np.mgrid[0:32, 0:32][1] - 16) ** 2 <= 16))


def test_dataset_lazy_workers_and_disk_cache(tmp_path):
    path = write_csv_dataset(tmp_path / "d", n=6)
    frame = load_dataset(path)
    cache = tmp_path / "cache"
    ds = SegmentationDataset(frame, cache=False, cache_dir=cache, size=24)
    batch = next(iter(DataLoader(ds, batch_size=6, num_workers=2)))
    assert batch["image"].shape == (6, 1, 24, 24)
    assert len(list(cache.glob("*.npz"))) == 6
    again = SegmentationDataset(frame, cache=False, cache_dir=cache, size=24)
    assert torch.equal(again[3]["mask"], ds[3]["mask"])
    assert torch.allclose(again[3]["image"], ds[3]["image"])
    small = SegmentationDataset(frame, cache=True, cache_bytes=32 * 32 * 8 * 2)
    for i in range(len(small)):
        small[i]
    assert len(small._store) == 2  # the memory cache stops at its byte budget


def test_unknown_format_and_option(tmp_path):
    with pytest.raises(InputError, match="cannot tell"):
        load_dataset(tmp_path)
    path = write_csv_dataset(tmp_path / "d", n=3)
    with pytest.raises(InputError, match="not known"):
        load_dataset(path, format="dicom")
    with pytest.raises(InputError, match="unknown option"):
        load_dataset(path, foregrund=1)


def test_cli_inspect_with_format_and_options(tmp_path):
    from typer.testing import CliRunner

    from applefair.cli import app
    from applefair.data.formats import parse_options

    assert parse_options(["foreground=255", "label_map={1: 0, 2: 1}", "target=disc"]) == {
        "foreground": 255, "label_map": {1: 0, 2: 1}, "target": "disc"}
    root = write_fairseg(tmp_path / "fs", n=4)
    res = CliRunner().invoke(app, ["data", "inspect", str(root), "--format", "fairseg", "--option", "target=disc",
                                   "--groups", "age@days:0,60,inf", "--quiet"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "format fairseg, 4 samples" in text and "60+" in text and "ethnicity" in text
    res = CliRunner().invoke(app, ["data", "inspect", str(root), "--option", "target=lens", "--quiet"])
    assert isinstance(res.exception, InputError) and "target 'lens'" in str(res.exception)
