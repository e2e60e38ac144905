"""`applefair models import module`: a user's own nn.Module class plus a weights-only state dict."""

from __future__ import annotations

import sys

import pytest
import torch
from import_sources import TinyUserNet
from safetensors.torch import save_file
from typer.testing import CliRunner

from applefair.cli import app, main
from applefair.engine.io import state_dict_hash
from applefair.models import load_model_dir

runner = CliRunner()
CLASS = "import_sources:TinyUserNet"  # tests/models is on sys.path under pytest


def _user_weights(tmp_path, fmt="safetensors"):
    torch.manual_seed(2)
    net = TinyUserNet(width=4)
    with torch.no_grad():
        net.enc1[1].running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(net.state_dict(), str(path))
    else:
        torch.save({"state_dict": net.state_dict()}, path)
    return net, path


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_imported_module_matches_the_users_own_forward(tmp_path, fmt):
    src, weights = _user_weights(tmp_path, fmt)
    result = runner.invoke(app, ["models", "import", "module", "--model-class", CLASS, "--arg", "width=4",
                                 "--weights", str(weights), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "the default site was guessed" in result.output
    net, spec = load_model_dir(tmp_path / "m")
    assert (spec.name, spec.head, spec.site) == ("custom", "sigmoid", "bottleneck")
    assert spec.args["model_class"] == CLASS and spec.args["kwargs"] == {"width": 4}
    assert state_dict_hash(net) == state_dict_hash(src)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), src.eval()(x))
    result = runner.invoke(app, ["models", "sites", str(tmp_path / "m")])
    assert result.exit_code == 0 and "bottleneck" in result.output and "1x16x16x16" in result.output


def test_named_sites_are_kept(tmp_path):
    _, weights = _user_weights(tmp_path)
    result = runner.invoke(app, ["models", "import", "module", "--model-class", CLASS, "--arg", "width=4",
                                 "--weights", str(weights), "--site", "enc2", "--skip-site", "enc1",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    _, spec = load_model_dir(tmp_path / "m")
    assert spec.site == "enc2" and spec.skip_sites == ["enc1"]


def _exit_2(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["applefair", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


def test_bad_module_imports_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys):
    _, weights = _user_weights(tmp_path)
    out = str(tmp_path / "m")
    base = ["models", "import", "module", "--weights", str(weights), "--out", out]
    assert "cannot import module 'no_such_pkg.nets'" in _exit_2(monkeypatch, capsys, [*base, "--model-class",
                                                                                "no_such_pkg.nets:Net"])
    assert "is not a torch.nn.Module subclass" in _exit_2(monkeypatch, capsys, [*base, "--model-class",
                                                                               "import_sources:nnunet_plans"])
    err = _exit_2(monkeypatch, capsys, [*base, "--model-class", CLASS, "--arg", "width=8"])
    assert "weights.safetensors" in err and "do not fit" in err
    err = _exit_2(monkeypatch, capsys, [*base, "--model-class", CLASS, "--arg", "width=4", "--site", "enc9"])
    assert "site 'enc9' is not a module" in err
    torch.save({"net": TinyUserNet(4).state_dict(), "extra": _Opaque()}, tmp_path / "pickled.pt")
    err = _exit_2(monkeypatch, capsys, ["models", "import", "module", "--model-class", CLASS, "--arg", "width=4",
                                        "--weights", str(tmp_path / "pickled.pt"), "--out", out])
    assert "refused to load" in err
    assert not (tmp_path / "m").exists()


class _Opaque:
    """Any Python object a pickled checkpoint may hold."""
