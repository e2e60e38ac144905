"""`applefair models import nnunet`: nnU-Net's network, normalisation and weights, equal to nnU-Net's own inference."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from import_sources import nnunet_plans, write_nnunet_results
from typer.testing import CliRunner

from applefair.cli import app, main
from applefair.engine.io import state_dict_hash
from applefair.models import load_model_dir
from applefair.models.nnunet import NnUNetNormalization, import_nnunet

runner = CliRunner()


def _import(results, out, configuration):
    result = runner.invoke(app, ["models", "import", "nnunet", str(results), "--configuration", configuration,
                                 "--fold", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return load_model_dir(out)


def _predictor(results):
    """nnU-Net's own predictor on the results folder: no mirroring, no Gaussian weighting (one tile)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(use_gaussian=False, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(results), (0,), "checkpoint_final.pth")
    return p


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_imported_nnunet_matches_nnunets_own_inference(tmp_path, configuration):
    pytest.importorskip("nnunetv2")
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    results = write_nnunet_results(tmp_path, configuration)
    net, spec = _import(results, tmp_path / "model", configuration)
    assert (spec.name, spec.head, spec.spatial_dims) == ("nnunet", "softmax", 2 if configuration == "2d" else 3)
    assert spec.site == "network.encoder.stages.2"
    assert spec.skip_sites == ["network.encoder.stages.0", "network.encoder.stages.1"]
    for f in ("source/plans.json", "source/dataset.json", "source.yaml"):
        assert (tmp_path / "model" / f).is_file(), f
    shape, spacing = ((1, 64, 64), [999.0, 1.0, 1.0]) if configuration == "2d" else ((16, 32, 32), [1.0, 1.0, 1.0])
    raw = (np.random.RandomState(0).rand(1, *shape) * 1500 - 700).astype(np.float32)  # no zero pixel: no crop
    x = torch.from_numpy(raw)[:, 0] if configuration == "2d" else torch.from_numpy(raw)
    with torch.no_grad():
        ours = net.eval()(x[None])[0]
    if configuration == "2d":
        ours = ours[:, None]
    p = _predictor(results)
    # 1. nnU-Net's preprocessing (normalisation) + its network, in float32
    data, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(raw, None, {"spacing": spacing}, p.plans_manager,
                                                                 p.configuration_manager, p.dataset_json)
    d = torch.from_numpy(data)
    with torch.no_grad():
        ref = p.network.eval()(d[:, 0][None] if configuration == "2d" else d[None])[0]
    ref = ref[:, None] if configuration == "2d" else ref
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()
    # 2. the whole predictor (it accumulates logits in float16: one half-precision step of tolerance)
    logits = p.predict_logits_from_preprocessed_data(d)
    assert torch.allclose(ours, logits.float(), atol=float(ours.abs().max()) * 2 ** -10 + 1e-5, rtol=0)
    _, prob = p.predict_single_npy_array(raw, {"spacing": spacing}, None, None, True)
    assert np.abs(torch.softmax(ours, 0).numpy() - prob).max() < 1e-3


def test_sites_command_lists_the_nnunet_stages_of_a_3d_model(tmp_path):
    results = write_nnunet_results(tmp_path, "3d_fullres")
    import_nnunet(results, tmp_path / "m3", "3d_fullres")
    result = runner.invoke(app, ["models", "sites", str(tmp_path / "m3"), "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "network.encoder.stages.2" in result.output and "1x16x8x8x8" in result.output
    assert "default site: network.encoder.stages.2" in result.output.replace("\n", " ")


def test_reload_is_bit_identical_and_folder_is_self_contained(tmp_path):
    results = write_nnunet_results(tmp_path / "src", "2d")
    net, _ = _import(results, tmp_path / "model", "2d")
    import shutil

    shutil.rmtree(tmp_path / "src")  # the model folder alone rebuilds the model
    again, spec = load_model_dir(tmp_path / "model")
    assert state_dict_hash(again) == state_dict_hash(net)
    x = torch.rand(2, 1, 48, 80)  # smaller than the patch on one side, larger on the other
    with torch.no_grad():
        assert again.eval()(x).shape == (2, 2, 48, 80)


@pytest.mark.parametrize("scheme", ["ZScoreNormalization", "CTNormalization", "RescaleTo01Normalization",
                                    "RGBTo01Normalization", "NoNormalization"])
@pytest.mark.parametrize("masked", [False, True])
def test_normalisation_equals_nnunets_classes(scheme, masked):
    pytest.importorskip("nnunetv2")
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as nn_norm

    props = nnunet_plans()["foreground_intensity_properties_per_channel"]["0"]
    rng = np.random.RandomState(1)
    vol = (rng.rand(1, 8, 12, 12) * 200).astype(np.float32)
    vol[:, :, :3] = 0  # a zero region outside the object
    vol[:, 4, 6, 6] = 0  # and a hole inside it (filled by nnU-Net's nonzero mask)
    seg = np.where(create_nonzero_mask(vol)[None], 0, -1)
    expected = getattr(nn_norm, scheme)(use_mask_for_norm=masked, intensityproperties=props).run(vol[0].copy(), seg[0])
    ours = NnUNetNormalization([{"scheme": scheme, "use_mask_for_norm": masked, "intensity": props}])(
        torch.from_numpy(vol)[None])
    assert np.allclose(ours[0, 0].numpy(), expected, atol=1e-5, rtol=1e-5)


def test_input_range_maps_unit_images_back_to_training_intensities(tmp_path):
    results = write_nnunet_results(tmp_path, "3d_fullres")
    plain = import_nnunet(results, tmp_path / "a", "3d_fullres")
    ranged = import_nnunet(results, tmp_path / "b", "3d_fullres", input_range=[-1000.0, 1000.0])
    assert plain.args["input_range"] is None and ranged.args["input_range"] == [-1000.0, 1000.0]
    a, _ = load_model_dir(tmp_path / "a")
    b, _ = load_model_dir(tmp_path / "b")
    hu = torch.rand(1, 1, 16, 32, 32) * 2000 - 1000
    with torch.no_grad():
        assert torch.allclose(a.eval()(hu), b.eval()((hu + 1000) / 2000), atol=1e-4)


def _exit_2(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["applefair", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3  # one line, wrapped by the console
    return " ".join(err.split())


def test_bad_nnunet_folders_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys):
    results = write_nnunet_results(tmp_path / "ok", "2d")
    out = tmp_path / "out"
    err = _exit_2(monkeypatch, capsys, ["models", "import", "nnunet", str(results), "-c", "3d_lowres", "--out",
                                        str(out)])
    assert "configuration '3d_lowres' not in configurations" in err and "plans.json" in err
    plans = json.loads((results / "plans.json").read_text())
    wrong = write_nnunet_results(tmp_path / "wrong", "2d", plans=plans, features=[4, 8, 32])
    err = _exit_2(monkeypatch, capsys, ["models", "import", "nnunet", str(wrong), "--out", str(out)])
    assert "checkpoint_final.pth" in err and "do not fit" in err
    err = _exit_2(monkeypatch, capsys, ["models", "import", "nnunet", str(results), "-c", "3d_fullres", "--out",
                                        str(out)])
    assert "checkpoint of configuration '2d'" in err and "'3d_fullres'" in err
    ckpt = results / "fold_0" / "checkpoint_final.pth"
    obj = torch.load(ckpt, weights_only=False)
    obj["logging"]["callback"] = _Pickled()  # an object that only full unpickling could rebuild
    torch.save(obj, ckpt)
    err = _exit_2(monkeypatch, capsys, ["models", "import", "nnunet", str(results), "--out", str(out)])
    assert "refused to load" in err
    bad_arch = nnunet_plans()
    bad_arch["configurations"]["2d"]["architecture"]["network_class_name"] = "os.system"
    (results / "plans.json").write_text(json.dumps(bad_arch))
    err = _exit_2(monkeypatch, capsys, ["models", "import", "nnunet", str(results), "--out", str(out)])
    assert "network class 'os.system' is not supported" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


class _Pickled:
    """Stands in for any Python object in a checkpoint."""
