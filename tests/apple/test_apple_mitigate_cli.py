"""`applefair mitigate`: the run folder, the untouched deployed model, bad input, resume."""

from __future__ import annotations

import json
import warnings

import pytest
import yaml
from typer.testing import CliRunner

import applefair
from applefair.engine.io import folder_hash
from applefair.errors import InputError


@pytest.fixture(scope="module")
def cli_app():
    from applefair.cli import app

    return app


def _invoke(app, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, args)


def test_mitigate_writes_a_complete_run_and_never_touches_the_model(cli_app, tiny_manifest, apple_model_dir,
                                                                    tmp_path):
    config = tmp_path / "apple.yaml"
    config.write_text(yaml.safe_dump({"apple": {"perturber": "conv", "width": 8, "d_hidden": 16, "batch_size": 8}}))
    before = folder_hash(apple_model_dir)
    out = tmp_path / "run"
    res = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                            "--attribute", "sex", "--epochs", "2", "--seed", "1", "--config", str(config),
                            "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    for name in ("patch.safetensors", "metrics.json", "per_sample.csv", "val/metrics.json", "deployed/metrics.json",
                 "leakage.json", "history.csv", "curves.png", "checkpoint.safetensors", "frozen_check.json",
                 "config.yaml", "run.log", "report.html", "report.md"):
        assert (out / name).is_file(), name
    assert folder_hash(apple_model_dir) == before
    check = json.loads((out / "frozen_check.json").read_text())
    assert check["unchanged"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["apple"]["epochs"] == 2 and resolved["apple"]["seed"] == 1
    assert resolved["apple"]["perturber"] == "conv"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["groups"]) == {"F", "M"}
    # the patch attaches to the deployed model and reproduces the run's test metrics
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.metrics.evaluate import predict_scores
    from applefair.models.registry import load_model_dir

    net, _ = load_model_dir(apple_model_dir)
    patched = applefair.attach(net, out / "patch.safetensors")
    assert patched.groups["attribute"] == "sex"
    frame = read_manifest(tiny_manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec.from_dict(patched.groups).fit(frame)
    scores = predict_scores(patched, SegmentationDataset(frame, groups, "test"), groups)
    assert float(scores["dice"].mean()) == pytest.approx(metrics["overall"]["dice"], abs=1e-6)

    # a second run into the same folder needs --resume or --overwrite; --resume on a finished run is a no-op
    again = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                              "-a", "sex", "--epochs", "2", "--seed", "1", "--config", str(config), "--out", str(out),
                              "--quiet"])
    assert isinstance(again.exception, InputError) and "--resume" in str(again.exception)
    resumed = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                                "-a", "sex", "--epochs", "2", "--seed", "1", "--config", str(config),
                                "--out", str(out), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["overall"]["dice"] == pytest.approx(
        metrics["overall"]["dice"], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--attribute", "nope"], "nope"),
    (["--attribute", "sex", "--config", "MISSING.yaml"], "config file not found"),
    (["--attribute", "sex", "--site", "model.99"], "site 'model.99'"),
])
def test_mitigate_bad_input_is_an_input_error(cli_app, tiny_manifest, apple_model_dir, tmp_path, args, message):
    res = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                            "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet", *args])
    assert isinstance(res.exception, InputError), res.output
    assert message in str(res.exception)


def test_mitigate_refuses_to_write_into_the_model_folder(cli_app, tiny_manifest, apple_model_dir):
    res = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                            "-a", "sex", "--out", str(apple_model_dir / "patch"), "--quiet"])
    assert isinstance(res.exception, InputError) and "never written" in str(res.exception)
    assert not (apple_model_dir / "patch").exists()


def test_unknown_apple_option_in_config(cli_app, tiny_manifest, apple_model_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpah: 2\n")
    res = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                            "-a", "sex", "--config", str(bad), "--out", str(tmp_path / "r"), "--quiet"])
    assert isinstance(res.exception, InputError) and "alpah" in str(res.exception)


@pytest.mark.parametrize("command", ["mitigate", "compare"])
def test_device_cuda_without_a_gpu_is_one_line_of_bad_input(cli_app, tiny_manifest, apple_model_dir, tmp_path,
                                                            monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    if command == "mitigate":
        args = ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir), "--attribute", "sex",
                "--epochs", "1", "--out", str(out), "--device", "cuda", "--quiet"]
    else:
        args = ["compare", "--config", "configs/smoke.yaml", "--out", str(out), "--device", "cuda", "--quiet"]
    res = _invoke(cli_app, args)  # applefair.cli.main turns an InputError into one line and exit code 2
    assert isinstance(res.exception, InputError), res.output
    assert str(res.exception).startswith("--device cuda: no CUDA device is visible")
    assert not out.exists() or not any(out.iterdir())


def test_mitigate_records_the_device_it_ran_on(cli_app, tiny_manifest, apple_model_dir, tmp_path):
    config = tmp_path / "apple.yaml"
    config.write_text(yaml.safe_dump({"apple": {"perturber": "conv", "width": 8, "d_hidden": 16, "batch_size": 8}}))
    out = tmp_path / "run"
    res = _invoke(cli_app, ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir),
                            "--attribute", "sex", "--epochs", "1", "--config", str(config), "--out", str(out),
                            "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["device"] == "cpu"


def test_mitigate_restarts_record_each_game_and_resume(cli_app, tiny_manifest, apple_model_dir, tmp_path):
    config = tmp_path / "apple.yaml"
    config.write_text(yaml.safe_dump({"apple": {"perturber": "conv", "width": 8, "d_hidden": 16, "batch_size": 8,
                                                "selection": "last"}}))
    out = tmp_path / "run"
    args = ["mitigate", "--data", str(tiny_manifest), "--model", str(apple_model_dir), "-a", "sex", "--epochs", "1",
            "--restarts", "2", "--seed", "4", "--config", str(config), "--out", str(out), "--quiet"]
    res = _invoke(cli_app, args)
    assert res.exit_code == 0, res.output
    check = json.loads((out / "frozen_check.json").read_text())
    assert check["unchanged"] and [r["seed"] for r in check["restarts"]] == [4, 1004]
    assert check["restart"] in (0, 1)
    # the console and the report say how many games were played and which one was kept
    said = " ".join(res.output.split())
    assert "APPLE played 2 games (seeds 4, 1004)" in said and "(kept)" in said
    assert "APPLE played 2 games (seeds 4, 1004)" in " ".join((out / "report.md").read_text().split())
    assert yaml.safe_load((out / "config.yaml").read_text())["apple"]["restarts"] == 2
    assert (out / "checkpoint.safetensors").is_file() and (out / "checkpoint_restart1.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    resumed = _invoke(cli_app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["overall"]["dice"] == pytest.approx(
        metrics["overall"]["dice"], abs=1e-9)
