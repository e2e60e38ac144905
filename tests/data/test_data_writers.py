"""Predicted-mask writer: PNG / NIfTI round trips, safe and unique file names, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from applefair.data.writers import prediction_names, safe_name, save_predictions
from applefair.errors import InputError


def test_2d_masks_round_trip_as_0_255_png(tmp_path):
    masks = torch.zeros(2, 1, 8, 6)
    masks[0, 0, 2:4, 1:5] = 1
    masks[1, 0, 7, 0] = 1
    paths = save_predictions(tmp_path, ["p1", "p2"], masks)
    assert [p.name for p in paths] == ["p1.png", "p2.png"]
    for path, mask in zip(paths, masks, strict=True):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "L"
            arr = np.asarray(im)
        assert arr.dtype == np.uint8 and arr.shape == (8, 6)
        assert set(np.unique(arr)) <= {0, 255}
        np.testing.assert_array_equal(arr == 255, mask[0].numpy() == 1)


def test_boolean_arrays_and_label_maps(tmp_path):
    labels = np.zeros((5, 5), dtype=np.int64)
    labels[1:3, 1:3] = 1
    labels[3, 3] = 2  # a label map keeps its labels
    binary = np.eye(4, dtype=bool)
    p_labels, p_bool = save_predictions(tmp_path, ["lab", "bin"], [labels, binary])
    np.testing.assert_array_equal(np.asarray(Image.open(p_labels)), labels.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(Image.open(p_bool)), binary.astype(np.uint8) * 255)


def test_3d_masks_are_nifti_with_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((4, 5, 6), dtype=np.float32)
    vol[1:3, 2:4, 0:5] = 1
    (path,) = save_predictions(tmp_path, ["case 7"], [vol], spacing=(2.0, 0.5, 0.8))
    assert path.name == "case_7.nii.gz"
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.astype(np.uint8))
    assert img.header.get_zooms() == pytest.approx((2.0, 0.5, 0.8))
    assert np.asarray(img.dataobj).dtype == np.uint8
    (iso,) = save_predictions(tmp_path, ["iso"], vol[None], spacing=1.5)
    assert nib.load(iso).header.get_zooms() == pytest.approx((1.5, 1.5, 1.5))
    with pytest.raises(InputError, match="spacing"):
        save_predictions(tmp_path, ["bad"], [vol], spacing=(1.0, 2.0))


def test_ids_become_safe_file_names():
    assert safe_name("sub-01/slice 3") == "sub-01_slice_3"
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_name(".hidden") == "hidden"
    assert safe_name(42) == "42"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(long_a)) <= 150 and safe_name(long_a) != safe_name(long_b)
    with pytest.raises(InputError, match="nothing usable"):
        safe_name("...")


def test_colliding_ids_are_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="'a/b' and 'a_b' would both be saved as 'a_b'"):
        prediction_names(["a/b", "a_b"])
    with pytest.raises(InputError, match="ignore case"):
        save_predictions(tmp_path, ["Case1", "case1"], torch.zeros(2, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="2 sample ids but 1 masks"):
        save_predictions(tmp_path, ["a", "b"], torch.zeros(1, 4, 4))
    with pytest.raises(InputError, match="threshold probabilities"):
        save_predictions(tmp_path, ["a"], torch.full((1, 4, 4), 0.7))
    with pytest.raises(InputError, match="0..255"):
        save_predictions(tmp_path, ["a"], [np.full((4, 4), 300)])
    with pytest.raises(InputError, match="2-D or 3-D"):
        save_predictions(tmp_path, ["a"], [np.zeros(4)])


def test_writes_are_atomic(tmp_path, monkeypatch):
    save_predictions(tmp_path, ["a"], torch.ones(1, 4, 4))
    before = (tmp_path / "a.png").read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise OSError("disk went away")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk went away"):
        save_predictions(tmp_path, ["a", "b"], torch.zeros(2, 4, 4))
    assert (tmp_path / "a.png").read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no partial or temporary file
