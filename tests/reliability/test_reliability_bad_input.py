"""Bad input across data, configs, checkpoints and CLI arguments.

Each case must exit with code 2, print one line that names the offending file/row/column/key,
print no traceback, and leave no output folder behind.
"""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from applefair.data.synthetic import generate
from applefair.models.registry import create_segmentor, save_model_dir


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from applefair.cli import main

    monkeypatch.setattr(sys, "argv", ["applefair", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    manifest = generate(root / "data", n=24, size=32, seed=0)
    net, spec = create_segmentor("unet", tiny=True)
    save_model_dir(root / "model", net, spec)
    return root, manifest


@pytest.fixture()
def data(base, tmp_path):
    """A private copy of the tiny dataset that a case may damage."""
    shutil.copytree(base[1].parent, tmp_path / "data")
    return tmp_path / "data" / "manifest.csv"


def _edit(manifest: Path, fn) -> Path:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame = fn(frame)
    frame.to_csv(manifest, index=False)
    return manifest


def _expect_bad(args, needle, monkeypatch, capsys, out: Path | None = None):
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    text = " ".join(err.split())
    assert code == 2, f"exit {code}; stderr: {err[-800:]}; stdout: {stdout[-400:]}"
    assert "Traceback" not in err + stdout
    assert "error:" in text.lower(), text
    message = text.lower().split("error:", 1)[1]  # progress bars may precede it on stderr
    assert needle.lower() in message, text
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


# --- data (through `applefair data inspect`, which validates before it reports) -------------------

def test_missing_manifest(tmp_path, monkeypatch, capsys):
    _expect_bad(["data", "inspect", tmp_path / "nope.csv"], "nope.csv", monkeypatch, capsys)


def test_missing_column(data, monkeypatch, capsys):
    _edit(data, lambda f: f.drop(columns=["mask"]))
    _expect_bad(["data", "inspect", data, "--format", "csv"], "mask", monkeypatch, capsys)


def test_missing_image_file(data, monkeypatch, capsys):
    first = pd.read_csv(data)["image"][0]
    (data.parent / first).unlink()
    _expect_bad(["data", "inspect", data], Path(first).name, monkeypatch, capsys)


def test_corrupt_image(data, monkeypatch, capsys):
    first = pd.read_csv(data)["image"][0]
    (data.parent / first).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _expect_bad(["data", "inspect", data], Path(first).name, monkeypatch, capsys)


def test_shape_mismatch(data, monkeypatch, capsys):
    from PIL import Image

    first = pd.read_csv(data)["mask"][0]
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(data.parent / first)
    _expect_bad(["data", "inspect", data], "shape", monkeypatch, capsys)


def test_path_escaping_root(data, monkeypatch, capsys):
    _edit(data, lambda f: f.assign(image=["../../etc/passwd"] + list(f["image"][1:])))
    _expect_bad(["data", "inspect", data], "escapes", monkeypatch, capsys)


def test_duplicate_ids(data, monkeypatch, capsys):
    _edit(data, lambda f: f.assign(id=["dup"] * len(f)))
    _expect_bad(["data", "inspect", data], "dup", monkeypatch, capsys)


def test_bad_split_value(data, monkeypatch, capsys):
    _edit(data, lambda f: f.assign(split=["training"] + list(f["split"][1:])))
    _expect_bad(["data", "inspect", data], "training", monkeypatch, capsys)


def test_nan_pixels(data, monkeypatch, capsys):
    arr = np.full((32, 32), np.nan, np.float32)
    np.save(data.parent / "images" / "nan.npy", arr)
    _edit(data, lambda f: f.assign(image=["images/nan.npy"] + list(f["image"][1:])))
    _expect_bad(["data", "inspect", data], "nan", monkeypatch, capsys)


def test_empty_manifest(data, monkeypatch, capsys):
    data.write_text("image,mask,split,sex\n")
    _expect_bad(["data", "inspect", data], "manifest.csv", monkeypatch, capsys)


# --- training a deployed model -----------------------------------------------------------------

def _train(data, out, *extra):
    return ["train", "--data", data, "--model", "unet", "--tiny", "--epochs", "1", "--out", out, "--quiet",
            *extra]


def test_unknown_model(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    args = _train(data, out)
    args[args.index("unet")] = "unet3000"
    _expect_bad(args, "unet3000", monkeypatch, capsys, out)


def test_empty_train_split(data, tmp_path, monkeypatch, capsys):
    _edit(data, lambda f: f.assign(split=["test"] * len(f)))
    out = tmp_path / "o"
    _expect_bad(_train(data, out), "train", monkeypatch, capsys, out)


def test_truncated_safetensors_checkpoint(base, data, tmp_path, monkeypatch, capsys):
    blob = (base[0] / "model" / "model.safetensors").read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(blob[: len(blob) // 3])
    out = tmp_path / "o"
    _expect_bad(_train(data, out, "--checkpoint", bad), "cut.safetensors", monkeypatch, capsys, out)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.marker),))


def test_pickle_checkpoint_is_refused_and_runs_nothing(data, tmp_path, monkeypatch, capsys):
    _Evil.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Evil()}, fh)
    out = tmp_path / "o"
    _expect_bad(_train(data, out, "--checkpoint", evil), "evil.pt", monkeypatch, capsys, out)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_another_architecture(data, tmp_path, monkeypatch, capsys):
    other, _ = create_segmentor("unet", channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    ckpt = tmp_path / "other.pt"
    torch.save(other.state_dict(), ckpt)
    out = tmp_path / "o"
    _expect_bad(_train(data, out, "--checkpoint", ckpt), "other.pt", monkeypatch, capsys, out)


# --- mitigation ---------------------------------------------------------------------------------

def _mitigate(data, model, out, *extra):
    return ["mitigate", "--data", data, "--model", model, "--attribute", "sex", "--epochs", "1", "--out", out,
            "--quiet", *extra]


def test_missing_attribute_column(base, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    args = _mitigate(data, base[0] / "model", out)
    args[args.index("sex")] = "race"
    _expect_bad(args, "race", monkeypatch, capsys, out)


def test_only_unknown_attribute_values(base, data, tmp_path, monkeypatch, capsys):
    _edit(data, lambda f: f.assign(sex=[""] * len(f)))
    out = tmp_path / "o"
    _expect_bad(_mitigate(data, base[0] / "model", out), "sex", monkeypatch, capsys, out)


def test_split_with_one_group(base, data, tmp_path, monkeypatch, capsys):
    _edit(data, lambda f: f.assign(sex=["M"] * len(f)))
    out = tmp_path / "o"
    _expect_bad(_mitigate(data, base[0] / "model", out), "group", monkeypatch, capsys, out)


def test_site_that_does_not_exist(base, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    _expect_bad(_mitigate(data, base[0] / "model", out, "--site", "model.9.nothing"), "model.9.nothing",
                monkeypatch, capsys, out)


def test_not_a_model_folder(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    (tmp_path / "empty").mkdir()
    _expect_bad(_mitigate(data, tmp_path / "empty", out), "empty", monkeypatch, capsys, out)


def test_config_with_unknown_key(base, data, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nalpah: 2.0\n")
    out = tmp_path / "o"
    _expect_bad(_mitigate(data, base[0] / "model", out, "--config", cfg), "alpah", monkeypatch, capsys, out)


def test_config_with_wrong_type(base, data, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: many\n")
    out = tmp_path / "o"
    _expect_bad(_mitigate(data, base[0] / "model", out, "--config", cfg), "epochs", monkeypatch, capsys, out)


# --- evaluation, reports, comparisons, synthesis ---------------------------------------------------

def test_truncated_patch(base, data, tmp_path, monkeypatch, capsys):
    patch = tmp_path / "patch.safetensors"
    patch.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    out = tmp_path / "o"
    _expect_bad(["evaluate", "--data", data, "--model", base[0] / "model", "--patch", patch, "--attribute", "sex",
                 "--out", out, "--quiet"], "patch.safetensors", monkeypatch, capsys, out)


def test_report_on_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "notarun").mkdir()
    _expect_bad(["report", tmp_path / "notarun"], "notarun", monkeypatch, capsys)


def test_compare_config_with_unknown_method(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "cmp.yaml"
    cfg.write_text("methods: [erm, magic]\nsegmentors: [{name: unet, tiny: true}]\n"
                   "datasets: [{name: tiny, synthetic: {kind: nodules, n: 24, size: 32}, groups: sex}]\n"
                   "seeds: [0]\nbudget: {epochs: 1}\n")
    out = tmp_path / "o"
    _expect_bad(["compare", "--config", cfg, "--out", out, "--quiet"], "magic", monkeypatch, capsys, out)


def test_synth_unknown_bias(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    _expect_bad(["synth", "nodules", "--out", out, "--n", "20", "--size", "32", "--bias", "wobble"], "wobble",
                monkeypatch, capsys, out)


def test_synth_bad_minority_share(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    _expect_bad(["synth", "nodules", "--out", out, "--n", "20", "--size", "32", "--minority-share", "1.5"],
                "1.5", monkeypatch, capsys, out)


def test_demo_refuses_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    _expect_bad(["demo", "--quick", "--quiet", "--out", out], "mine", monkeypatch, capsys)
    assert (out / "thesis.tex").read_text() == "precious"


def test_evaluate_config_unknown_key_and_a_working_config(base, data, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"data: {data}\nmodel: {base[0] / 'model'}\nattribute: [sex]\nbootstrapp: 10\n")
    out = tmp_path / "o"
    _expect_bad(["evaluate", "--config", cfg, "--out", out, "--quiet"], "bootstrapp", monkeypatch, capsys, out)
    cfg.write_text(f"data: {data}\nmodel: {base[0] / 'model'}\nattribute: [sex]\nbootstrap: 20\nleakage: false\n"
                   "metrics: dice,iou\n")
    code, _, err = run_cli(["evaluate", "--config", cfg, "--out", out, "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attribute"] == "sex" and "ci" in metrics and not (out / "leakage.json").exists()


def test_synth_config_file_and_its_unknown_key(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("n: 12\nsize: 32\nbias: artifact\nsede: 3\n")
    out = tmp_path / "o"
    _expect_bad(["synth", "nodules", "--out", out, "--config", cfg, "--quiet"], "sede", monkeypatch, capsys, out)
    cfg.write_text("n: 12\nsize: 32\nbias: artifact\nseed: 3\n")
    code, _, err = run_cli(["synth", "nodules", "--out", out, "--config", cfg, "--n", "14", "--quiet"],
                           monkeypatch, capsys)
    assert code == 0, err
    frame = pd.read_csv(out / "manifest.csv")
    assert len(frame) == 14  # the command line overrides the file


@pytest.mark.parametrize("command", [["demo"], ["synth"], ["data", "inspect"], ["models", "sites"], ["train"],
                                     ["mitigate"], ["evaluate"], ["compare"], ["report"], ["bench"]])
def test_every_command_with_settings_takes_a_config_file(command, monkeypatch, capsys):
    code, out, _ = run_cli([*command, "--help"], monkeypatch, capsys)
    assert code == 0 and "--config" in out, out[-600:]
