"""The synthetic benchmark: both 2-D kinds, every mechanism pushes the intended group difference (the 3-D kind
``nodules3d``: tests/data/test_data_volumes.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from applefair.data import BIASES, KINDS, generate, load_dataset, vessels
from applefair.errors import InputError

PLANAR = [k for k in KINDS if k != "nodules3d"]  # the kinds written as PNG images

def _load(manifest):
    m = pd.read_csv(manifest)
    root = manifest.parent
    imgs = [np.asarray(Image.open(root / p), np.float64) / 255 for p in m["image"]]
    masks = [np.asarray(Image.open(root / p)) > 0 for p in m["mask"]]
    minority = (m["sex"] == "F") if "sex" in m else (m["age"] >= 60)
    return m, imgs, masks, minority.to_numpy()


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", PLANAR)
def test_deterministic_and_strength_zero_is_control(tmp_path, kind):
    a = generate(tmp_path / "a", n=10, size=32, bias="contrast", seed=4, kind=kind)
    b = generate(tmp_path / "b", n=10, size=32, bias="contrast", seed=4, kind=kind)
    assert _digest(a.parent) == _digest(b.parent)
    none = generate(tmp_path / "none", n=10, size=32, bias="none", seed=4, kind=kind)
    for bias in BIASES if kind == "nodules" else vessels.BIASES:
        zero = generate(tmp_path / f"z_{bias}", n=10, size=32, bias=bias, strength=0.0, seed=4, kind=kind)
        assert _digest(zero.parent) == _digest(none.parent), bias
    assert _digest(a.parent) != _digest(none.parent)


def test_manifest_contract_and_shares(tmp_path):
    nod = generate(tmp_path / "n", n=40, size=32, seed=1, minority_share=0.3)
    m = pd.read_csv(nod)
    assert list(m.columns) == ["id", "image", "mask", "split", "sex"] and (m["sex"] == "F").sum() == 12
    ves = generate(tmp_path / "v", n=40, size=32, seed=1, kind="vessels", minority_share=0.3)
    v = pd.read_csv(ves)
    assert list(v.columns) == ["id", "image", "mask", "split", "age"]
    assert (v["age"] >= 60).sum() == 12 and v["age"].between(20, 90).all()
    for frame in (m, v):  # the minority share is the same in every split (stratified)
        minority = (frame["sex"] == "F") if "sex" in frame else (frame["age"] >= 60)
        assert (minority.groupby(frame["split"]).sum() >= 2).all()
    assert len(load_dataset(ves)) == 40


def _contrast(img, mask):
    return img[~mask].mean() - img[mask].mean()


@pytest.mark.parametrize("kind", PLANAR)
def test_mechanisms_push_the_intended_difference(tmp_path, kind):
    def by_group(bias, fn):
        m, imgs, masks, minority = _load(generate(tmp_path / bias, n=24, size=64, bias=bias, seed=2, kind=kind,
                                                  minority_share=0.5))
        vals = np.array([fn(i, k) for i, k in zip(imgs, masks, strict=True)])
        return vals[~minority].mean(), vals[minority].mean()

    major, minor = by_group("contrast", _contrast)  # difficulty: weaker contrast for the minority
    assert minor < 0.75 * major
    major, minor = by_group("gain", lambda i, k: i.std())  # calibration: compressed range
    assert minor < 0.8 * major
    major, minor = by_group("anatomy", lambda i, k: k.mean())  # smaller lesions / narrower vessels
    assert minor < 0.8 * major

    def rim(img, mask):  # brightness just outside the object relative to farther out
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
        far = ndimage.binary_dilation(mask, iterations=5) & ~ndimage.binary_dilation(mask, iterations=3)
        return img[ring].mean() - img[far].mean()

    major, minor = by_group("artifact", rim)  # the majority only has the bright border
    assert major > minor + 0.03


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="kind"):
        generate(tmp_path, n=10, kind="brains")
    with pytest.raises(InputError, match="bias"):
        generate(tmp_path, n=10, bias="noise")
    with pytest.raises(InputError, match="minority_share"):
        generate(tmp_path, n=10, minority_share=1.0)


def test_cli_synth_and_inspect(tmp_path):
    from applefair.cli import app

    out = tmp_path / "ves"
    res = CliRunner().invoke(app, ["synth", "vessels", "--out", str(out), "--n", "12", "--size", "32",
                                   "--bias", "anatomy", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.csv").is_file() and len(list((out / "images").glob("*.png"))) == 12
    before = _digest(out)
    res = CliRunner().invoke(app, ["synth", "vessels", "--out", str(out), "--n", "12", "--size", "32", "--quiet"])
    assert isinstance(res.exception, InputError) and "not empty" in str(res.exception)
    assert _digest(out) == before  # nothing overwritten
    res = CliRunner().invoke(app, ["synth", "vessels", "--out", str(tmp_path / "x"), "--bias", "blur"])
    assert isinstance(res.exception, InputError) and not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, ["data", "inspect", str(out), "--groups", "age:0,60,inf", "--quiet"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "60+" in text and "mask foreground fraction" in text and "32x32: 12" in text


@pytest.mark.parametrize("kind", PLANAR)
def test_spurious_cue_present_and_training_protocol_shifted(tmp_path, kind):
    """`spurious`: the minority's images carry a calibration cue in every split; only the minority's
    *training* masks follow another protocol (nodules: traced inside the border; vessels: wider)."""
    m, imgs, masks, minority = _load(generate(tmp_path / "s", n=40, size=64, bias="spurious", seed=3, kind=kind,
                                              minority_share=0.5, strength=1.5))
    _, _, ref_masks, _ = _load(generate(tmp_path / "r", n=40, size=64, bias="none", seed=3, kind=kind,
                                        minority_share=0.5))
    again = generate(tmp_path / "s2", n=40, size=64, bias="spurious", seed=3, kind=kind, minority_share=0.5,
                     strength=1.5)
    assert _digest(again.parent) == _digest(tmp_path / "s")  # deterministic
    train = (m["split"] == "train").to_numpy()
    ratio = np.array([k.sum() / max(r.sum(), 1) for k, r in zip(masks, ref_masks, strict=True)])
    # the majority, and the minority outside the training split, keep the reference masks exactly
    assert np.all(ratio[~minority | ~train] == 1.0)
    for k, r, keep in zip(masks, ref_masks, ~minority | ~train, strict=True):
        assert not keep or np.array_equal(k, r)
    shifted = ratio[minority & train]
    if kind == "nodules":  # the core without a 4-px margin: about half of the lesion's area
        assert np.all(shifted < 0.8) and np.all(shifted > 0.1)
        assert all(np.all(r[k]) for k, r, s in zip(masks, ref_masks, minority & train, strict=True) if s)
    else:  # traced wider
        assert np.all(shifted > 1.3)
    # the cue: a compressed, brighter intensity range in the minority, in every split
    lo = np.array([np.percentile(i, 2) for i in imgs])
    for split in ("train", "val", "test"):
        sel = (m["split"] == split).to_numpy()
        assert lo[sel & minority].min() > lo[sel & ~minority].mean() + 0.1, split


def test_marker_is_a_local_cue_and_its_training_masks_are_larger(tmp_path):
    """`marker`: only the minority's images carry a bright mark in the top-left corner, in every split; the rest
    of the image is drawn as without a bias; only the minority's *training* masks are traced outside the border."""
    m, imgs, masks, minority = _load(generate(tmp_path / "k", n=40, size=64, bias="marker", seed=3,
                                              minority_share=0.5, strength=1.5))
    _, ref_imgs, ref_masks, _ = _load(generate(tmp_path / "r", n=40, size=64, bias="none", seed=3,
                                               minority_share=0.5))
    side = round(0.06 * 64)
    corner = (slice(1, 1 + side), slice(1, 1 + side))
    for img, ref, is_min in zip(imgs, ref_imgs, minority, strict=True):
        diff = np.abs(img.astype(float) - ref.astype(float))
        outside = diff.copy()
        outside[corner] = 0
        assert outside.max() == 0  # nothing but the corner differs
        assert (diff[corner].mean() > 0.2) == bool(is_min)  # the mark is bright, minority only
    train = (m["split"] == "train").to_numpy()
    for k, r, is_min, tr in zip(masks, ref_masks, minority, train, strict=True):
        if is_min and tr:
            assert k.sum() > 1.2 * r.sum() and np.all(k[r])  # larger, and it contains the reference
        else:
            assert np.array_equal(k, r)


def test_texture_cue_keeps_the_mean_and_shifts_only_minority_training_masks(tmp_path):
    m, imgs, masks, minority = _load(generate(tmp_path / "t", n=40, size=64, bias="texture", seed=3,
                                              minority_share=0.5, strength=1.5))
    _, ref_imgs, ref_masks, _ = _load(generate(tmp_path / "r", n=40, size=64, bias="none", seed=3,
                                               minority_share=0.5))
    rows = lambda a: a.astype(float).mean(axis=1)  # noqa: E731 - the banding is horizontal
    for img, ref, is_min in zip(imgs, ref_imgs, minority, strict=True):
        band = rows(img) - rows(ref)
        assert abs(band.mean()) < 0.01  # zero-mean (clipping at 0 and 1 aside)
        assert (np.abs(np.fft.rfft(band))[64 // 4] > 0.03 * 64 / 2) == bool(is_min)  # period 4 px: minority only
    train = (m["split"] == "train").to_numpy()
    for k, r, is_min, tr in zip(masks, ref_masks, minority, train, strict=True):
        assert (k.sum() < r.sum()) if (is_min and tr) else np.array_equal(k, r)


def test_local_and_texture_cues_are_nodules_only(tmp_path):
    with pytest.raises(InputError, match="nodules"):
        generate(tmp_path / "v", n=12, size=32, bias="marker", kind="vessels")
    assert not (tmp_path / "v").exists()
