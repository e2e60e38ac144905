"""3-D volumes end to end on the ``nodules3d`` benchmark: the demo's steps in Python (train, mitigate, evaluate,
run folder, report), the commands (synth, train, mitigate, evaluate), and `compare` with the 3-D U-Net."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from applefair.cli import app
from applefair.engine.io import folder_hash, state_dict_hash
from applefair.errors import InputError

TRAIN = ["--tiny", "--epochs", "2", "--batch-size", "4", "--augment", "none", "--quiet"]


def _invoke(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def volume_data(tmp_path_factory):
    """`applefair synth nodules3d`: 24 volumes of 24 voxels a side, misused group cue."""
    out = tmp_path_factory.mktemp("vol") / "data"
    res = _invoke(["synth", "nodules3d", "--out", str(out), "--n", "24", "--size", "24", "--bias", "spurious",
                   "--strength", "1.5", "--minority-share", "0.5", "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "images").glob("*.nii.gz"))) == 24 and (out / "manifest.csv").is_file()
    return out


def test_cli_inspect_volumes(volume_data):
    res = _invoke(["data", "inspect", str(volume_data), "--groups", "sex", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "volume sizes (D x H x W: count): 24x24x24: 24" in " ".join(res.output.split())


def test_demo_steps_on_volumes(tmp_path, volume_data):
    """generate -> build_model/train_deployed -> fit_method -> evaluate_change -> run folder -> report.html."""
    from applefair.apple.config import AppleConfig
    from applefair.baselines import get_method
    from applefair.data import GroupSpec, SegmentationDataset, read_manifest
    from applefair.engine import runfolder
    from applefair.models.registry import save_model_dir
    from applefair.report import write_reports
    from applefair.training.erm import TrainConfig
    from applefair.workflows._common import FrozenCheck
    from applefair.workflows.evaluate import evaluate_change
    from applefair.workflows.mitigate import fit_method, write_patch
    from applefair.workflows.train import build_model, train_deployed

    frame = read_manifest(volume_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec("sex").fit(frame)
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
    net, spec = build_model("unet3d", tiny=True, seed=0)
    trained = train_deployed(net, spec, split, groups, TrainConfig(epochs=2, batch_size=4, seed=0, augment=False))
    assert len(trained.history) == 2
    net.eval()
    run = tmp_path / "run"
    save_model_dir(run / runfolder.DEPLOYED, net, spec)
    frozen = FrozenCheck(net)
    cfg = AppleConfig(epochs=2, batch_size=4, seed=0, perturb="all", d_inputs="all", d_kind="spatial")
    fit = fit_method(get_method("apple"), net, spec, split, groups, cfg)
    assert set(fit.latent_sites) == {spec.site, *spec.skip_sites}
    assert all(p["dims"] == 3 for p in fit.model.perturber_specs().values())
    write_patch(run, fit, spec, groups, cfg, frozen.hash_before)
    ev = evaluate_change(fit.model, split["test"], groups, deployed=net, sites=fit.latent_sites, bootstrap=50,
                         metrics=("dice", "iou", "hd95", "nsd"))
    fit.model.remove()
    assert set(ev.after.per_sample.columns) >= {"id", "group", "dice", "hd95", "nsd"}
    assert all(len(rows) == len(split["test"]) for rows in ev.after.latents.values())
    for folder, frame_, scored in ((runfolder.BEFORE, ev.before_frame, ev.before), (runfolder.AFTER, ev.frame,
                                                                                     ev.after)):
        runfolder.write_evaluation(run / folder, frame_.to_dict(), scored.per_sample)
    runfolder.write_paired(run, ev.paired)
    runfolder.write_leakage(run, ev.leakage or {})
    check = frozen.verify(fit.deployed, **fit.extra)  # the deployed weights, and APPLE's copy, unchanged
    runfolder.write_frozen_check(run, check)
    runfolder.write_history(run, fit.history)
    runfolder.write_config(run, {"command": "demo", "data": str(volume_data)})
    write_reports(run)
    html = (run / "report.html").read_text()
    assert check["unchanged"] and state_dict_hash(net) == check["hash_before"]
    assert "Example overlays" in html and "the slice through the middle of the lesion" in html
    assert set(json.loads((run / "leakage.json").read_text())) == {spec.site, *spec.skip_sites}


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory, volume_data):
    out = tmp_path_factory.mktemp("m3d") / "model"
    res = _invoke(["train", "--data", str(volume_data), "--model", "unet3d", "--attribute", "sex", *TRAIN,
                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_cli_train_unet3d_on_volumes(trained_3d, volume_data, tmp_path):
    spec = yaml.safe_load((trained_3d / "model.yaml").read_text())
    assert spec["spatial_dims"] == 3 and spec["preset"] == "unet3d"
    assert len(pd.read_csv(trained_3d / "history.csv")) == 2
    res = _invoke(["train", "--data", str(volume_data), "--model", "unet", *TRAIN, "--out", str(tmp_path / "flat")])
    assert isinstance(res.exception, InputError)  # exit code 2 from the command line
    assert "holds 3-D volumes, but model 'unet' takes 2-D images" in str(res.exception)
    assert not (tmp_path / "flat").exists()


@pytest.fixture(scope="module")
def mitigated_3d(tmp_path_factory, volume_data, trained_3d):
    out = tmp_path_factory.mktemp("mit3d") / "run"
    before = folder_hash(trained_3d)
    res = _invoke(["mitigate", "--data", str(volume_data), "--model", str(trained_3d), "--attribute", "sex",
                   "--epochs", "1", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert folder_hash(trained_3d) == before
    return out


def test_cli_mitigate_volumes(mitigated_3d):
    check = json.loads((mitigated_3d / "frozen_check.json").read_text())
    assert check["unchanged"] and check["model_folder_sha256_before"] == check["model_folder_sha256_after"]
    metrics = json.loads((mitigated_3d / "metrics.json").read_text())
    assert set(metrics["groups"]) == {"F", "M"} and (mitigated_3d / "report.html").is_file()


def test_cli_evaluate_volumes_in_mm_with_predictions(tmp_path, volume_data, trained_3d, mitigated_3d):
    out = tmp_path / "eval"
    res = _invoke(["evaluate", "--data", str(volume_data), "--model", str(trained_3d), "--patch",
                   str(mitigated_3d / "patch.safetensors"), "--attribute", "sex", "--bootstrap", "20",
                   "--save-predictions", "--out", str(out)])
    assert res.exit_code == 0, res.output
    per_sample = pd.read_csv(out / "per_sample.csv")
    manifest = pd.read_csv(volume_data / "manifest.csv").set_index("id")
    for sid in per_sample["id"]:  # each predicted volume keeps its own voxel spacing
        saved = nib.load(out / "predictions" / f"{sid}.nii.gz")
        source = nib.load(volume_data / manifest.loc[sid, "image"])
        assert saved.shape == (24, 24, 24)
        assert torch.allclose(torch.tensor(saved.header.get_zooms()), torch.tensor(source.header.get_zooms()))
    assert (out / "deployed" / "predictions").is_dir() and (out / "paired.json").is_file()
    diagonal = (24 * torch.tensor(saved.header.get_zooms()).double()).norm().item()
    assert per_sample["hd95"].between(0, 1.5 * diagonal).all()  # mm, not voxels of another volume
    res = _invoke(["evaluate", "--data", str(volume_data.parent / "nope"), "--model", str(trained_3d),
                   "--attribute", "sex", "--out", str(tmp_path / "bad")])
    assert isinstance(res.exception, InputError) and not (tmp_path / "bad").exists()


def test_evaluate_refuses_a_3d_model_on_images(tmp_path, tiny_manifest, trained_3d):
    res = _invoke(["evaluate", "--data", str(tiny_manifest), "--model", str(trained_3d), "--attribute", "sex",
                   "--out", str(tmp_path / "e")])
    assert isinstance(res.exception, InputError) and not (tmp_path / "e").exists()
    assert "holds 2-D images, but model 'unet' takes 3-D volumes" in str(res.exception)


def test_compare_runs_on_volumes_with_the_3d_unet(tmp_path):
    config = {"name": "vol", "seeds": [0], "deploy": {"epochs": 1, "batch_size": 4},
              "budget": {"epochs": 1, "batch_size": 4}, "bootstrap": 20,
              "datasets": [{"name": "n3d", "synthetic": {"kind": "nodules3d", "n": 16, "size": 16, "bias": "contrast",
                                                         "minority_share": 0.5}, "groups": "sex"}],
              "segmentors": [{"name": "unet3d", "tiny": True}], "methods": ["erm", "apple"]}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    res = _invoke(["compare", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    cells = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(cells["method"]) == {"deployed", "erm", "apple"} and (cells["status"] == "done").all()
