"""`applefair models import bundle`: a MONAI bundle's network, weights and intensity preprocessing."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from import_sources import BUNDLE_NETWORK, write_bundle
from typer.testing import CliRunner

from applefair.cli import app, main
from applefair.models import load_model_dir

runner = CliRunner()


def test_imported_bundle_matches_monais_own_inference(tmp_path):
    from monai.bundle import ConfigParser

    bundle = write_bundle(tmp_path, extra_transforms=[
        {"_target_": "Spacingd", "keys": ["image", "label"], "pixdim": [1.0, 1.0]},
        {"_target_": "ScaleIntensityRanged", "keys": "label", "a_min": 0, "a_max": 1, "b_min": 0, "b_max": 1}])
    result = runner.invoke(app, ["models", "import", "bundle", str(bundle), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "ScaleIntensityRange, NormalizeIntensity" in result.output and "Spacingd" in result.output
    source = yaml.safe_load((tmp_path / "m" / "source.yaml").read_text())
    assert source["preprocessing_not_applied"] == ["Spacingd (transforms[3])"]
    net, spec = load_model_dir(tmp_path / "m")
    assert (spec.name, spec.head, spec.in_channels, spec.spatial_dims) == ("monai_bundle", "softmax", 1, 2)
    assert spec.site == "network.model.1.submodule.1.submodule" and spec.skip_sites == ["network.model.0",
                                                                                       "network.model.1.submodule.0"]
    # MONAI's own inference: the bundle's parsed network, weights, preprocessing (without the spatial step) and inferer
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["preprocessing"]["transforms"] = parser["preprocessing"]["transforms"][:3]
    ref_net = parser.get_parsed_content("network")
    ref_net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    pre, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    x = torch.rand(3, 1, 64, 64)
    x[0, 0, :4] = 0  # NormalizeIntensityd(nonzero=True) leaves these out of its statistics
    with torch.no_grad():
        ref = torch.cat([inferer(pre({"image": img})["image"][None], ref_net.eval()) for img in x])
        ours = net.eval()(x)
    assert ours.shape == (3, 2, 64, 64)
    assert torch.allclose(ours, ref.as_tensor() if hasattr(ref, "as_tensor") else ref, atol=1e-5, rtol=0)


def _exit_2(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["applefair", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


@pytest.mark.parametrize("change,message", [
    ({"_target_": "os.system"}, "_target_ 'os.system' is outside monai.networks"),
    ({"channels": "$[8, 16, 32]"}, "expressions run code"),
    ({"spatial_dims": "@no_such_key"}, "reference '@no_such_key' is not defined"),
    ({"channels": [8, 16, 64]}, "do not fit"),
])
def test_unsafe_or_wrong_bundles_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, change, message):
    bundle = write_bundle(tmp_path)
    import json

    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg["network_def"] = {**BUNDLE_NETWORK, **change}
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    err = _exit_2(monkeypatch, capsys, ["models", "import", "bundle", str(bundle), "--out", str(tmp_path / "m")])
    assert message in err
    assert not (tmp_path / "m").exists()


def test_bundle_without_config_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    err = _exit_2(monkeypatch, capsys, ["models", "import", "bundle", str(tmp_path / "empty"), "--out",
                                        str(tmp_path / "m")])
    assert "configs/inference.json" in err
