"""Imported models go through the whole story: import -> mitigate (APPLE, 1 epoch) -> evaluate --patch -> report.

One model per import path (nnU-Net 2d, a MONAI bundle, a user's own module), tiny, on 60 synthetic
64 px images; the deployed weights' hash must not change.
"""

from __future__ import annotations

import json

import pytest
import torch
from import_sources import TinyUserNet, write_bundle, write_nnunet_results
from safetensors.torch import save_file
from typer.testing import CliRunner

from applefair.cli import app
from applefair.engine.io import state_dict_hash
from applefair.models import load_model_dir

runner = CliRunner()


def _import(kind: str, root, out) -> None:
    if kind == "nnunet":
        argv = ["nnunet", str(write_nnunet_results(root, "2d")), "--configuration", "2d", "--fold", "0"]
    elif kind == "bundle":
        argv = ["bundle", str(write_bundle(root))]
    else:
        torch.manual_seed(0)
        save_file(TinyUserNet(width=4).state_dict(), str(root / "user.safetensors"))
        argv = ["module", "--model-class", "import_sources:TinyUserNet", "--arg", "width=4", "--weights",
                str(root / "user.safetensors"), "--skip-site", "enc1"]
    result = runner.invoke(app, ["models", "import", *argv, "--out", str(out)])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nnunet", "bundle", "module"])
def test_imported_model_mitigate_evaluate_report(tiny_manifest, tmp_path, kind):
    model = tmp_path / "model"
    _import(kind, tmp_path, model)
    deployed_hash = state_dict_hash(load_model_dir(model)[0])
    run = tmp_path / "mitigate"
    result = runner.invoke(app, ["mitigate", "--data", str(tiny_manifest), "--model", str(model), "--attribute", "sex",
                                 "--epochs", "1", "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    check = json.loads((run / "frozen_check.json").read_text())
    assert check["unchanged"] and check["hash_after"] == deployed_hash
    assert (run / "report.html").is_file() and (run / "patch.safetensors").is_file()
    ev = tmp_path / "evaluate"
    result = runner.invoke(app, ["evaluate", "--data", str(tiny_manifest), "--model", str(model), "--patch",
                                 str(run / "patch.safetensors"), "--attribute", "sex", "--bootstrap", "50",
                                 "--folds", "2", "--out", str(ev), "--quiet"])
    assert result.exit_code == 0, result.output
    check = json.loads((ev / "frozen_check.json").read_text())
    assert check["unchanged"] and check["hash_after"] == deployed_hash
    assert (ev / "report.html").is_file()
    assert state_dict_hash(load_model_dir(model)[0]) == deployed_hash
