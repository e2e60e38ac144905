"""Property-based tests of the manifest reader: any generated manifest either loads to a valid frame
(every path a file inside the dataset root, unique ids, known splits) or is an InputError with a
one-line message; never another exception, never a path outside the root."""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from applefair.data.formats import load_dataset
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SPLITS, read_manifest
from applefair.errors import InputError


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A dataset root with a few real files, and a file just outside it."""
    base = tmp_path_factory.mktemp("props")
    folder = base / "ds"
    for sub in ("images", "masks", "ünï cødé"):
        (folder / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(folder / "images" / f"a{i}.png")
        Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(folder / "masks" / f"a{i}.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "ünï cødé" / "ß.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(base / "outside.png")
    (folder / "images" / "notes.txt").write_text("not an image")
    return folder


ODD = ["", " ", "-1", "nan", "NaN", "None", "null", "0", "1.5", "F", "M", "female", "ünï", "名字", "a,b", 'q"uote',
       "line\nbreak", "tab\there", "\x00", "🙂", "=1+1", "x" * 300]


def paths(root: Path) -> st.SearchStrategy[str]:
    good = [f"images/a{i}.png" for i in range(3)] + [f"masks/a{i}.png" for i in range(3)]
    bad = ["../outside.png", "images/../../outside.png", "./images/a0.png", "images//a1.png", "images/notes.txt",
           "images/missing.png", "images/", ".", "..", "/etc/passwd", str(root.parent / "outside.png"),
           str(root / "images" / "a2.png"), "ünï cødé/ß.png", "images/a0.png\x00.png", "~/a.png", "images\\a0.png",
           "x" * 300 + ".png", "/" + "y" * 5000, "file:///etc/passwd", "images/a0.PNG", " images/a0.png "]
    return st.one_of(st.sampled_from(good), st.sampled_from(bad), st.sampled_from(ODD), st.text(max_size=12))


def cells(root: Path) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD), st.sampled_from(SPLITS), st.sampled_from(["TRAIN", " val", "dev"]),
                     paths(root), st.text(max_size=8))


@st.composite
def manifests(draw, root: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows): valid manifests with odd but legal content, the same with one cell broken, and wild ones
    (required and optional columns in any order, some missing, some twice, odd extras, ragged rows)."""
    mode = draw(st.sampled_from(["valid", "one broken cell", "wild"]))
    if mode == "wild":
        return draw(_wild(root))
    images = ["images/a0.png", "./images//a0.png", str(root / "images" / "a0.png")]
    extra = draw(st.lists(st.sampled_from(["sex", "age", "id", "", "名字", "notes", "image_key"]), max_size=4,
                          unique=True))
    header = draw(st.permutations(["image", "mask", "split", *extra]))
    n = draw(st.integers(1, 4))
    ids = draw(st.lists(st.one_of(st.text(min_size=1, max_size=6), st.sampled_from(ODD[1:])), min_size=n,
                        max_size=n, unique_by=lambda t: t.strip()))
    rows = []
    for r in range(n):
        row = []
        for col in header:
            if col == "image":
                row.append(draw(st.sampled_from(images)).replace("a0", f"a{r % 3}") if r < 3 else "ünï cødé/ß.png")
            elif col == "mask":
                row.append(draw(st.sampled_from([f"masks/a{i}.png" for i in range(3)] + ["ünï cødé/ß.png"])))
            elif col == "split":
                row.append(draw(st.sampled_from(SPLITS)))
            elif col == "id":
                row.append(ids[r])
            else:
                row.append(draw(cells(root)))
        rows.append(row)
    if mode == "one broken cell":
        r, c = draw(st.integers(0, n - 1)), draw(st.integers(0, len(header) - 1))
        rows[r][c] = draw(cells(root))
    return header, rows


@st.composite
def _wild(draw, root: Path) -> tuple[list[str], list[list[str]]]:
    names = ["image", "mask", "split", "id", "sex", "age"]
    header = draw(st.lists(st.sampled_from(names + ["", "Image", "unnamed", "名字", "image "]), max_size=8))
    if draw(st.booleans()):  # most manifests have the required columns
        header = ["image", "mask", "split"] + header
    header = draw(st.permutations(header))
    n = draw(st.integers(0, 6))
    rows = []
    for _ in range(n):
        row = []
        for col in header:
            if col in ("image", "mask"):
                row.append(draw(paths(root)))
            elif col == "split":
                row.append(draw(st.one_of(st.sampled_from(SPLITS), cells(root))))
            elif col == "id":
                row.append(draw(st.one_of(st.sampled_from(["p1", "p2", "p1 ", "1", "01"]), st.sampled_from(ODD))))
            else:
                row.append(draw(cells(root)))
        if draw(st.integers(0, 9)) == 0:  # a ragged row: a cell short, or one too many
            row = row[:-1] if row and draw(st.booleans()) else row + ["extra"]
        rows.append(row)
    return header, rows


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _check(frame, root: Path) -> None:
    real = root.resolve()
    assert {"id", "image", "mask", "split", "image_path", "mask_path"} <= set(frame.columns)
    assert frame["id"].is_unique and frame["split"].isin(SPLITS).all() and len(frame) > 0
    for p in [*frame["image_path"], *frame["mask_path"]]:
        q = Path(p)
        assert q.is_absolute() and q == q.resolve() and q.is_file(), p
        assert real in q.parents, f"{p} is outside the dataset root {real}"


def _one_line(exc: InputError) -> None:
    text = str(exc)
    assert text.strip() and "\n" not in text and "\r" not in text, repr(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
@example(data=None)  # the plain, valid manifest
def test_any_manifest_loads_validly_or_is_one_line_of_bad_input(root, data):
    if data is None:
        header, rows = ["image", "mask", "split", "sex"], [["images/a0.png", "masks/a0.png", "train", "F"],
                                                           ["images/a1.png", "masks/a1.png", "val", "M"]]
    else:
        header, rows = data.draw(manifests(root))
    manifest = root / "manifest.csv"
    _write(manifest, header, rows)
    for read in (lambda: read_manifest(manifest), lambda: load_dataset(root), lambda: load_dataset(manifest, "csv")):
        try:
            frame = read()
        except InputError as exc:
            _one_line(exc)
            event("bad input")
            continue
        _check(frame, root)
        event("loaded")
        for spec in [s for s in ("sex", "age:0,60,inf", "sex*age:0,60,inf") if s.split(":")[0].split("*")[0]
                     in frame.columns and ("age" not in s or "age" in frame.columns)]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    groups = GroupSpec.from_dict(spec if ":" in spec else {"attribute": spec}).fit(frame)
            except InputError as exc:
                _one_line(exc)
                event("groups: bad input")
            else:
                event("groups fitted")
                ids = groups.assign(frame)
                assert len(ids) == len(frame) and ((ids >= -1) & (ids < groups.num_groups)).all()
    if data is None:
        assert len(read_manifest(manifest)) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_manifest(root, raw):
    """Not even a CSV: still InputError, one line."""
    manifest = root / "bytes.csv"
    manifest.write_bytes(raw)
    try:
        frame = read_manifest(manifest)
    except InputError as exc:
        _one_line(exc)
    else:
        _check(frame, root)


def test_symlink_out_of_the_root_is_refused(root):
    """A link inside the root that points outside it is an escape too (paths are resolved first)."""
    link = root / "images" / "link.png"
    if not link.is_symlink():
        os.symlink(root.parent / "outside.png", link)
    _write(root / "m.csv", ["image", "mask", "split"], [["images/link.png", "masks/a0.png", "train"]])
    with pytest.raises(InputError, match="escapes the dataset root"):
        read_manifest(root / "m.csv")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(max_size=20).filter(lambda t: "/" not in t and t.strip(".")),
                      st.sampled_from(["x" * 300, "a\x00b", " ", "manifest.csv\n", "y" * 300 + ".csv"])))
def test_any_dataset_path_is_a_frame_or_bad_input(root, name):
    """Whatever --data names (here: inside an empty folder), the answer is a frame or one line of bad input."""
    empty = root.parent / "empty"
    empty.mkdir(exist_ok=True)
    for path in [str(empty / name)] + ([name] if not name.strip() else []):  # blank: as given, too
        try:
            frame = load_dataset(path)
        except InputError as exc:
            _one_line(exc)
        else:
            _check(frame, root)
    with pytest.raises(InputError, match="empty"):
        load_dataset("")
