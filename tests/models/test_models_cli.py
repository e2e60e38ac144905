"""`applefair models list|sites` and `applefair train` (tiny, 1 epoch)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from typer.testing import CliRunner

from applefair.cli import app, main
from applefair.engine.io import state_dict_hash
from applefair.models import create_segmentor, load_model_dir, segment

runner = CliRunner()


def test_models_list_names_the_zoo(tmp_path):
    result = runner.invoke(app, ["models", "list"], env={"APPLEFAIR_CACHE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    for name in ("unet", "attention_unet", "swin_unetr", "dynunet", "smp_unet", "sam", "samed"):
        assert name in result.output


def test_models_sites_marks_default_and_skips():
    result = runner.invoke(app, ["models", "sites", "dynunet", "--tiny", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "bottleneck" in result.output and "default" in result.output and "skip" in result.output
    assert "1x64x8x8" in result.output


def test_train_writes_a_loadable_model_folder(tiny_manifest, tmp_path):
    out = tmp_path / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.invoke(app, ["train", "--data", str(tiny_manifest), "--model", "unet", "--tiny",
                                     "--epochs", "1", "--batch-size", "16", "--optimizer", "sgd",
                                     "--augment", "hflip,vflip,rotate,intensity", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    for f in ("model.safetensors", "model.yaml", "config.yaml", "history.csv", "run.log"):
        assert (out / f).is_file(), f
    net, spec = load_model_dir(out)
    assert spec.name == "unet" and spec.site and spec.skip_sites
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert segment(net.eval(), {"image": x}).shape == (2, 1, 64, 64)


def test_train_imports_a_checkpoint_without_training(tmp_path):
    torch.manual_seed(0)
    src, _ = create_segmentor("sam", tiny=True)
    torch.save(src.sam.state_dict(), tmp_path / "medsam_like.pth")
    result = runner.invoke(app, ["train", "--model", "sam", "--tiny", "--epochs", "0", "--checkpoint",
                                 str(tmp_path / "medsam_like.pth"), "--out", str(tmp_path / "imported"), "--quiet"])
    assert result.exit_code == 0, result.output
    net, _ = load_model_dir(tmp_path / "imported")
    assert state_dict_hash(net) == state_dict_hash(src)


def test_wrong_checkpoint_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    src, _ = create_segmentor("unet", tiny=True)
    torch.save(src.state_dict(), tmp_path / "unet.pt")
    monkeypatch.setattr(sys, "argv", ["applefair", "train", "--model", "dynunet", "--tiny", "--epochs", "0",
                                      "--checkpoint", str(tmp_path / "unet.pt"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "do not fit architecture 'dynunet'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_train_config_file_and_misspelt_key(tmp_path, monkeypatch, capsys):
    src, _ = create_segmentor("dynunet", tiny=True)
    torch.save(src.state_dict(), tmp_path / "dyn.pt")
    (tmp_path / "ok.yaml").write_text(f"model: dynunet\ntiny: true\nepochs: 0\ncheckpoint: {tmp_path / 'dyn.pt'}\n")
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "ok.yaml"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert state_dict_hash(load_model_dir(tmp_path / "m")[0]) == state_dict_hash(src)
    (tmp_path / "bad.yaml").write_text("model: dynunet\nepoch: 3\n")
    monkeypatch.setattr(sys, "argv", ["applefair", "train", "--config", str(tmp_path / "bad.yaml"),
                                      "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "unknown key 'epoch'" in capsys.readouterr().err
