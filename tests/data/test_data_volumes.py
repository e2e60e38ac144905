"""3-D samples: the ``nodules3d`` benchmark (NIfTI with spacing, the manifest contract, the mechanisms), the
volume mode of the readers and of the dataset (spacing per sample, resizing), and bad volumes."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from applefair.data import GroupSpec, SegmentationDataset, generate, load_dataset, validate_samples
from applefair.data.nodules3d import DEFAULT_SPACING, SPACING_JITTER
from applefair.errors import InputError


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.nii.gz")):
        h.update(p.read_bytes())
    return h.hexdigest()


def _volumes(manifest):
    m = pd.read_csv(manifest)
    root = manifest.parent
    imgs = [np.asarray(nib.load(root / p).dataobj, np.float64) / 255 for p in m["image"]]
    masks = [np.asarray(nib.load(root / p).dataobj) > 0 for p in m["mask"]]
    spacing = [tuple(float(z) for z in nib.load(root / p).header.get_zooms()) for p in m["image"]]
    return m, imgs, masks, spacing, (m["sex"] == "F").to_numpy()


@pytest.fixture(scope="module")
def volumes3d(tmp_path_factory):
    """12 ``nodules3d`` volumes of 24 voxels a side (spurious, strength 1.5), written once."""
    return generate(tmp_path_factory.mktemp("n3d") / "d", n=12, size=24, bias="spurious", strength=1.5, seed=3,
                    kind="nodules3d", minority_share=0.5)


def test_nodules3d_follows_the_manifest_contract_with_spacing(volumes3d):
    m, imgs, masks, spacing, minority = _volumes(volumes3d)
    assert list(m.columns) == ["id", "image", "mask", "split", "sex"] and minority.sum() == 6
    assert all(p.endswith(".nii.gz") for p in [*m["image"], *m["mask"]])
    assert all(i.shape == (24, 24, 24) and k.shape == (24, 24, 24) for i, k in zip(imgs, masks, strict=True))
    assert all(0.0 < k.mean() < 0.2 for k in masks)  # one lesion, inside the volume
    for sp in spacing:  # thick slices; in-plane spacing jittered per volume, the same on both in-plane axes
        assert sp[0] == DEFAULT_SPACING[0] and sp[1] == sp[2]
        assert abs(sp[1] / DEFAULT_SPACING[1] - 1) <= SPACING_JITTER + 1e-6
    assert len(set(spacing)) > 1
    frame = load_dataset(volumes3d)  # the manifest names whole NIfTI files: one 3-D sample per row
    assert "slice" not in frame.columns and len(frame) == 12


def test_nodules3d_is_deterministic_and_strength_zero_is_the_control(tmp_path):
    kw = {"n": 10, "size": 16, "seed": 4, "kind": "nodules3d"}
    a, b = generate(tmp_path / "a", bias="contrast", **kw), generate(tmp_path / "b", bias="contrast", **kw)
    assert _digest(a.parent) == _digest(b.parent)
    none = generate(tmp_path / "none", bias="none", **kw)
    for bias in ("contrast", "spurious", "marker"):
        zero = generate(tmp_path / f"z_{bias}", bias=bias, strength=0.0, **kw)
        assert _digest(zero.parent) == _digest(none.parent), bias
    assert _digest(a.parent) != _digest(none.parent)


def test_nodules3d_mechanisms(tmp_path, volumes3d):
    """contrast: the minority's lesions are fainter; spurious: a calibration cue in every split, and only the
    minority's training masks traced inside the border (by a margin in mm); none: no difference."""
    kw = {"n": 12, "size": 24, "seed": 3, "kind": "nodules3d", "minority_share": 0.5}
    _, imgs, masks, _, minority = _volumes(generate(tmp_path / "c", bias="contrast", **kw))
    contrast = np.array([i[~k].mean() - i[k].mean() for i, k in zip(imgs, masks, strict=True)])
    assert contrast[minority].mean() < 0.6 * contrast[~minority].mean()
    m, s_imgs, s_masks, _, minority = _volumes(volumes3d)
    _, r_imgs, r_masks, _, _ = _volumes(generate(tmp_path / "r", bias="none", **kw))
    train = (m["split"] == "train").to_numpy()
    for k, r, is_min, tr in zip(s_masks, r_masks, minority, train, strict=True):
        if is_min and tr:
            assert 0 < k.sum() < 0.9 * r.sum() and np.all(r[k])  # the core: smaller, inside the reference
        else:
            assert np.array_equal(k, r)
    lo = np.array([np.percentile(i, 2) for i in s_imgs])  # the cue: a brighter floor, minority only
    assert lo[minority].min() > lo[~minority].max()
    ref_lo = np.array([np.percentile(i, 2) for i in r_imgs])
    assert abs(ref_lo[minority].mean() - ref_lo[~minority].mean()) < 0.05


def test_nodules3d_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="16 to 96 voxels"):
        generate(tmp_path / "a", n=10, size=8, kind="nodules3d")
    with pytest.raises(InputError, match="spacing"):
        generate(tmp_path / "b", n=10, size=32, kind="nodules", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        generate(tmp_path / "c", n=10, size=16, kind="nodules3d", spacing=(1.0, 0.0, 1.0))


def test_volume_dataset_carries_spacing_and_resizes_in_mm(volumes3d, tmp_path):
    frame = load_dataset(volumes3d)
    groups = GroupSpec("sex").fit(frame)
    ds = SegmentationDataset(frame, groups, cache_dir=tmp_path / "cache")
    item = ds[0]
    assert ds.volumes and ds.spatial_dims == 3
    assert item["image"].shape == item["mask"].shape == (1, 24, 24, 24)
    header = nib.load(frame["image_path"][0]).header.get_zooms()
    assert item["spacing"].dtype == torch.float64 and torch.allclose(item["spacing"], torch.tensor(header).double())
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["spacing"].shape == (4, 3) and batch["image"].shape == (4, 1, 24, 24, 24)
    again = SegmentationDataset(frame, groups, cache_dir=tmp_path / "cache")[0]  # from the disk cache
    assert torch.equal(again["spacing"], item["spacing"]) and torch.equal(again["mask"], item["mask"])
    small = SegmentationDataset(frame, groups, size=16)[0]
    assert small["image"].shape == (1, 16, 16, 16)
    assert torch.allclose(small["spacing"], item["spacing"] * 24 / 16)  # the same physical extent
    assert ds.spacings()[0] == tuple(float(v) for v in item["spacing"])
    stats = validate_samples(frame, groups)
    assert (stats["depth"] == 24).all() and (stats["height"] == 24).all()


def test_nifti_reader_volume_mode(tmp_path):
    from data_fixtures import write_nifti

    root = write_nifti(tmp_path / "nii", n=3, depth=5)
    frame = load_dataset(root, volumes=True, intensity="window", window=[-500, 500])
    assert len(frame) == 3 and "slice" not in frame.columns and set(frame["id"]) == {"v0", "v1", "v2"}
    item = SegmentationDataset(frame, GroupSpec("sex").fit(frame))[0]
    assert item["image"].shape == (1, 32, 32, 5) and torch.equal(item["spacing"], torch.ones(3).double())
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert len(load_dataset(root)) == 15  # without it: one 2-D sample per slice, as before
    with pytest.raises(InputError, match="foreground voxels"):
        load_dataset(root, volumes=True, min_foreground=10**6)


def _write_pair(root, name, image, mask, spacing=(1.0, 1.0, 1.0), mask_spacing=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for folder, arr, sp in (("images", image, spacing), ("labels", mask, mask_spacing or spacing)):
        img = nib.Nifti1Image(arr, np.diag([*sp[:3], 1.0]))
        img.header.set_zooms(sp[: arr.ndim])
        nib.save(img, root / folder / f"{name}.nii.gz")


def test_bad_volumes_are_one_line_input_errors(tmp_path):
    vol = np.zeros((8, 8, 8), np.uint8)
    vol[2:5, 2:5, 2:5] = 1
    cases = {
        "spacing": ((vol, vol, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0)), "spacing .* differs from the mask"),
        "shape": ((vol, vol[:, :, :6], (1.0, 1.0, 1.0), None), "differs from mask shape"),
        "fourd": ((np.zeros((8, 8, 8, 2), np.uint8), np.zeros((8, 8, 8, 2), np.uint8), (1.0,) * 4, None),
                  "expected a 3D volume"),
    }
    for name, ((image, mask, sp, msp), message) in cases.items():
        root = tmp_path / name
        _write_pair(root, "v0", image, mask, sp, msp)
        pd.DataFrame({"image": ["images/v0.nii.gz"], "mask": ["labels/v0.nii.gz"], "split": ["train"]}).to_csv(
            root / "manifest.csv", index=False)
        frame = load_dataset(root)  # paths only; the pixels are read by the dataset and by validate_samples
        for read in (lambda f: SegmentationDataset(f)[0], validate_samples):
            with pytest.raises(InputError, match=message) as err:
                read(frame)
            assert "\n" not in str(err.value) and "v0.nii.gz" in str(err.value)


def test_a_manifest_mixing_volumes_and_images_is_refused(tmp_path, volumes3d):
    from PIL import Image

    m = pd.read_csv(volumes3d)
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(volumes3d.parent / "flat.png")
    m.loc[0, "image"] = m.loc[0, "mask"] = "flat.png"
    mixed = tmp_path / "mixed.csv"
    m.to_csv(mixed, index=False)
    frame = load_dataset(mixed, root=str(volumes3d.parent))
    with pytest.raises(InputError, match="mixes whole NIfTI volumes .* with 2-D images"):
        SegmentationDataset(frame)
