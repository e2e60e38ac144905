"""The same seed gives identical results on CPU; every run folder records how it was made."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from applefair.data.synthetic import generate
from applefair.engine.io import load_tensors


def _cli(args, monkeypatch) -> int:
    from applefair.cli import main

    monkeypatch.setattr(sys, "argv", ["applefair", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("det") / "data", n=40, size=32, seed=2)


def test_train_and_mitigate_are_deterministic_for_a_seed(manifest, tmp_path, monkeypatch):
    outs = []
    for k in range(2):
        model = tmp_path / f"model{k}"
        assert _cli(["train", "--data", manifest, "--model", "unet", "--tiny", "--epochs", "2", "--seed", "7",
                     "--out", model, "--quiet"], monkeypatch) == 0
        run = tmp_path / f"apple{k}"
        assert _cli(["mitigate", "--data", manifest, "--model", model, "--attribute", "sex", "--epochs", "2",
                     "--seed", "7", "--out", run, "--quiet"], monkeypatch) == 0
        outs.append((model, run))
    (m0, r0), (m1, r1) = outs
    assert (m0 / "model.safetensors").read_bytes() == (m1 / "model.safetensors").read_bytes()
    p0, p1 = load_tensors(r0 / "patch.safetensors"), load_tensors(r1 / "patch.safetensors")
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    metrics = sorted(p.relative_to(r0) for p in r0.rglob("metrics.json"))
    assert metrics
    for rel in metrics:
        assert json.loads((r0 / rel).read_text()) == json.loads((r1 / rel).read_text()), rel
    # a different seed gives a different model (the comparison above can fail)
    other = tmp_path / "model_other"
    assert _cli(["train", "--data", manifest, "--model", "unet", "--tiny", "--epochs", "2", "--seed", "8",
                 "--out", other, "--quiet"], monkeypatch) == 0
    assert (other / "model.safetensors").read_bytes() != (m0 / "model.safetensors").read_bytes()
    # every run folder records versions, the command line and the commit (None outside a git checkout)
    for folder in (m0, r0):
        run = yaml.safe_load((folder / "config.yaml").read_text())["run"]
        assert {"applefair", "torch", "monai", "python", "git_commit", "argv"} <= set(run)
        assert run["argv"][1] in ("train", "mitigate")
