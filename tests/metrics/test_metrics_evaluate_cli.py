"""`applefair evaluate` and `applefair aggregate-seeds` end to end on a tiny untrained U-Net and a random patch."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from applefair.cli import app
from applefair.errors import InputError
from applefair.metrics.fairness import fairness_summary

runner = CliRunner()


def _strict_json(path):
    def no_constants(name):
        raise AssertionError(f"{path}: non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=no_constants)


@pytest.fixture(scope="module")
def model_and_patch(tmp_path_factory):
    from applefair.apple.patch import PatchedSegmentor, perturbers_for, save_patch
    from applefair.models.registry import create_segmentor, save_model_dir

    root = tmp_path_factory.mktemp("evalmodel")
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    save_model_dir(root / "model", net, spec)
    patched = PatchedSegmentor(net, perturbers_for(net, [spec.site], torch.zeros(1, 1, 64, 64)))
    for p in patched.perturbers.parameters():  # a non-trivial perturbation (zero-init would change nothing)
        p.data.add_(0.2 * torch.randn_like(p))
    save_patch(root / "patch.safetensors", patched, {"groups": {"attribute": "sex", "groups": ["F", "M"]}})
    patched.remove()
    return root / "model", root / "patch.safetensors"


def _evaluate(*args):
    return runner.invoke(app, ["evaluate", "--quiet", "--folds", "3", *map(str, args)])


@pytest.fixture(scope="module")
def patched_run(tiny_manifest, model_and_patch, tmp_path_factory):
    model, patch = model_and_patch
    out = tmp_path_factory.mktemp("evalrun") / "run"
    res = _evaluate("--data", tiny_manifest, "--model", model, "--patch", patch, "--attribute", "sex",
                    "--bootstrap", "60", "--out", out)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


def test_patched_run_writes_every_file(patched_run, tiny_frame):
    for name in ("config.yaml", "metrics.json", "per_sample.csv", "leakage.json", "paired.json",
                 "frozen_check.json", "deployed/metrics.json", "deployed/per_sample.csv", "report.html", "report.md"):
        assert (patched_run / name).is_file(), name
    per_sample = pd.read_csv(patched_run / "per_sample.csv", dtype={"id": str})
    assert len(per_sample) == int((tiny_frame["split"] == "test").sum())
    assert {"id", "group", "dice", "iou", "hd95", "nsd"} <= set(per_sample.columns)
    assert _strict_json(patched_run / "frozen_check.json")["unchanged"] is True


def test_metrics_json_agrees_with_per_sample_csv(patched_run):
    metrics = _strict_json(patched_run / "metrics.json")
    per_sample = pd.read_csv(patched_run / "per_sample.csv", dtype={"id": str, "group": str})
    again = fairness_summary(per_sample, "sex", ["F", "M"])
    assert metrics["overall"]["dice"] == pytest.approx(again["overall"]["dice"])
    assert metrics["fairness"]["es_dice_sum"] == pytest.approx(again["fairness"]["es_dice_sum"])
    assert metrics["ci"]["resamples"] == 60 and len(metrics["ci"]["fairness"]["dice_delta"]) == 2
    assert metrics["group_spec"]["attribute"] == "sex"
    assert any("small group" in w for w in metrics["warnings"])  # 3 F test images in the tiny data


def test_paired_and_leakage_outputs(patched_run):
    paired = _strict_json(patched_run / "paired.json")
    after = _strict_json(patched_run / "metrics.json")
    before = _strict_json(patched_run / "deployed" / "metrics.json")
    gap = paired["fairness"]["dice_delta"]
    assert gap["diff"] == pytest.approx(after["fairness"]["dice_delta"] - before["fairness"]["dice_delta"])
    assert len(gap["ci"]) == 2 and isinstance(gap["excludes_zero"], bool)
    assert set(paired["wilcoxon"]) == {"overall", "F", "M"}
    leakage = _strict_json(patched_run / "leakage.json")
    # every decoder input: the three skips of the tiny U-Net, then the bottleneck, which the patch perturbs
    assert [e["role"] for e in leakage.values()] == ["skip", "skip", "skip", "perturbed"]
    for entry in leakage.values():
        auc_keys = [k for k in entry if "auc" in k]
        assert {"auc_before", "auc_after", "mlp_auc_before", "mlp_auc_after", "spatial_auc_before",
                "spatial_auc_after", "spatial_auc_after_ci", "auc", "spatial_auc"} <= set(auc_keys)
        assert entry["patched"] and entry["n_per_group"].keys() == {"F", "M"}
    skip = next(iter(leakage.values()))  # a skip is not perturbed: the same latent before and after
    assert skip["auc_before"] == skip["auc_after"] and skip["spatial_auc_before"] == skip["spatial_auc_after"]
    use = _strict_json(patched_run / "use.json")
    assert set(use) == {"deployed", "patched"}
    for entry in use.values():
        assert entry["statistic"] == "map" and list(entry["sites"].values()) == ["skip", "skip", "skip", "perturbed"]
        assert {"output_change", "output_change_ci", "null_output_change", "p_value", "used", "worst_group",
                "verdict"} <= set(entry)
        assert set(entry["groups"]) == {"F", "M"}


def test_intersection_of_two_attributes_without_patch(tiny_manifest, model_and_patch, tmp_path):
    model, _ = model_and_patch
    frame = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False)
    frame["age"] = [str(20 + (7 * i) % 60) for i in range(len(frame))]
    manifest = tiny_manifest.parent / "manifest_age.csv"
    frame.to_csv(manifest, index=False)
    res = _evaluate("--data", manifest, "--model", model, "--attribute", "sex", "--attribute", "age:0,50,inf",
                    "--bootstrap", "0", "--metrics", "dice,iou", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output + repr(res.exception)
    metrics = _strict_json(tmp_path / "run" / "metrics.json")
    assert len(metrics["groups"]) >= 3 and all("|" in g for g in metrics["groups"])
    assert "ci" not in metrics and not (tmp_path / "run" / "paired.json").exists()
    assert set(_strict_json(tmp_path / "run" / "use.json")) == {"model"}  # no patch: the model as given
    leak = _strict_json(tmp_path / "run" / "leakage.json")
    entry = next(iter(leak.values()))
    assert "auc_after" not in entry and entry["auc"] is not None and not entry["patched"]


def test_bad_attribute_is_an_input_error(tiny_manifest, model_and_patch, tmp_path):
    model, _ = model_and_patch
    res = _evaluate("--data", tiny_manifest, "--model", model, "--attribute", "nosuch", "--out", tmp_path / "r")
    assert isinstance(res.exception, InputError) and "nosuch" in str(res.exception)
    assert not (tmp_path / "r").exists()


def test_aggregate_seeds(patched_run, tiny_manifest, model_and_patch, tmp_path):
    model, patch = model_and_patch
    second = tmp_path / "seed1"
    res = _evaluate("--data", tiny_manifest, "--model", model, "--patch", patch, "--attribute", "sex",
                    "--bootstrap", "30", "--seed", "1", "--no-leakage", "--no-use", "--out", second)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert not (second / "use.json").exists() and not (second / "leakage.json").exists()
    res = runner.invoke(app, ["aggregate-seeds", str(patched_run), str(second), "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    agg = _strict_json(tmp_path / "s.json")
    assert agg["metrics"]["overall"]["dice"]["n"] == 2
    # same model and data: the point estimates do not depend on the seed, only the CIs do
    assert agg["metrics"]["overall"]["dice"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert "marker" in agg["paired"]["fairness"]["dice_delta"]
    assert "±" in agg["metrics"]["overall"]["dice"]["text"]


def test_group_spec_resolution(tmp_path):
    from applefair.data.groups import build_group_spec

    assert build_group_spec([], None, {"attribute": "sex", "groups": ["F", "M"]}).groups == ["F", "M"]
    assert build_group_spec(["sex", "age:0,60,inf"], None).attributes == ["sex", "age"]
    spec_file = tmp_path / "groups.yaml"
    spec_file.write_text("attribute: age\nbins: [0, 40, 60, inf]\n")
    assert build_group_spec([], str(spec_file)).groups == ["0-40", "40-60", "60+"]
    assert build_group_spec(["age"], str(spec_file)).attribute == "age"
    with pytest.raises(InputError, match="--attribute names"):
        build_group_spec(["sex"], "age:0,60,inf")
    with pytest.raises(InputError, match="no sensitive attribute"):
        build_group_spec([], None)
    with pytest.raises(InputError, match="not found"):
        build_group_spec([], str(tmp_path / "missing.yaml"))


def test_convention_is_recorded_and_predictions_are_saved(tiny_manifest, tiny_frame, model_and_patch, tmp_path):
    """--convention fairseg scores the peer's way (its 5 px NSD tolerance) and says so in every file;
    --save-predictions writes one PNG per test image, for the patched and the deployed model."""
    from PIL import Image

    from applefair.data.writers import prediction_names

    model, patch = model_and_patch
    out = tmp_path / "run"
    res = _evaluate("--data", tiny_manifest, "--model", model, "--patch", patch, "--attribute", "sex",
                    "--bootstrap", "20", "--no-leakage", "--no-use", "--convention", "fairseg", "--save-predictions",
                    "--out", out)
    assert res.exit_code == 0, res.output + repr(res.exception)
    metrics = _strict_json(out / "metrics.json")
    assert metrics["convention"]["name"] == "fairseg" and metrics["convention"]["nsd_tolerance"] == 5.0
    assert _strict_json(out / "paired.json")["convention"]["name"] == "fairseg"
    assert _strict_json(out / "deployed" / "metrics.json")["convention"]["name"] == "fairseg"
    per_sample = pd.read_csv(out / "per_sample.csv", dtype={"id": str})
    for folder in (out / "predictions", out / "deployed" / "predictions"):
        names = sorted(p.stem for p in folder.glob("*.png"))
        assert names == sorted(prediction_names(per_sample["id"]))
        mask = np.asarray(Image.open(folder / f"{names[0]}.png"))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    # the saved masks are what was scored: the Dice of a saved mask equals its per-sample Dice
    first = per_sample.iloc[0]
    row = tiny_frame[(tiny_frame["split"] == "test") & (tiny_frame["id"].astype(str) == first["id"])].iloc[0]
    truth = np.asarray(Image.open(row["mask_path"])) > 0
    pred = np.asarray(Image.open(out / "predictions" / f"{prediction_names([first['id']])[0]}.png")) > 0
    both = truth.sum() + pred.sum()
    dice = 2 * (truth & pred).sum() / both if both else 0.0  # fairseg: an empty prediction scores 0
    assert dice == pytest.approx(first["dice"], abs=1e-6)


def test_unknown_convention_is_bad_input(tiny_manifest, model_and_patch, tmp_path):
    model, _ = model_and_patch
    res = _evaluate("--data", tiny_manifest, "--model", model, "--attribute", "sex", "--convention", "medseg",
                    "--out", tmp_path / "run")
    assert isinstance(res.exception, InputError) and "medseg" in str(res.exception)
    assert not (tmp_path / "run").exists()
