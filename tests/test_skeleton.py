"""End-to-end checks of the walking skeleton: `applefair demo --quick` and its output contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from applefair.apple.patch import PatchedSegmentor, perturbers_for
from applefair.engine.io import state_dict_hash
from applefair.models.registry import create_segmentor, load_model_dir

FAIRNESS_KEYS = {"dice_delta", "dice_skewness", "dice_std", "dice_worst", "es_dice_sum", "es_dice_std"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run([sys.executable, "-m", "applefair", "demo", "--quick", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_quick_writes_run_folder(demo_run):
    out, proc = demo_run
    for rel in ("config.yaml", "data/manifest.csv", "deployed/model.safetensors", "deployed/model.yaml",
                "before/metrics.json", "before/per_sample.csv", "after/metrics.json", "after/per_sample.csv",
                "patch.safetensors", "report.md", "run.log"):
        assert (out / rel).is_file(), rel
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    assert "Dice gap" in proc.stdout and "Deployed weights unchanged: yes" in proc.stdout


@pytest.mark.parametrize("stage", ["before", "after"])
def test_demo_metrics_schema(demo_run, stage):
    out, _ = demo_run
    m = json.loads((out / stage / "metrics.json").read_text())
    assert m["attribute"] == "sex"
    assert {"n", "dice", "iou"} <= set(m["overall"])
    assert set(m["groups"]) == {"F", "M"}
    for g in m["groups"].values():
        assert {"n", "dice", "iou"} <= set(g)
    assert FAIRNESS_KEYS <= set(m["fairness"])
    per = pd.read_csv(out / stage / "per_sample.csv")
    assert {"id", "group", "dice", "iou"} <= set(per.columns)
    assert len(per) == m["overall"]["n"]
    assert per["dice"].mean() == pytest.approx(m["overall"]["dice"])
    manifest = pd.read_csv(out / "data" / "manifest.csv")
    assert len(per) == (manifest["split"] == "test").sum()


def test_demo_report_states_frozen_check_and_gap(demo_run):
    out, _ = demo_run
    report = (out / "report.md").read_text()
    check = json.loads((out / "frozen_check.json").read_text())
    assert "| unchanged | yes |" in report and f"| hash_before | {check['hash_before']} |" in report
    before = json.loads((out / "before" / "metrics.json").read_text())
    assert f"{100 * before['fairness']['dice_delta']:.1f}" in report
    assert (out / "report.html").is_file() and (out / "paired.json").is_file()
    assert "ci" in before  # bootstrap confidence intervals for every aggregate


def test_deployed_weights_hash_matches_saved_model(demo_run):
    out, _ = demo_run
    net, _ = load_model_dir(out / "deployed")
    check = json.loads((out / "frozen_check.json").read_text())
    assert state_dict_hash(net) == check["hash_before"] == check["hash_after"]


def test_zero_init_perturber_keeps_output_and_weights():
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    net.eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        ref = net(x)
    before = state_dict_hash(net)
    patched = PatchedSegmentor(net, perturbers_for(net, [spec.site], x[:1]))
    patched.eval()
    with torch.no_grad():
        out = patched(x)
    assert torch.equal(out, ref)
    fo, fp = patched.latents[spec.site]
    assert torch.equal(fo, fp)
    # one optimiser step on the perturber only: the deployed weights stay bit-identical
    opt = torch.optim.Adam(patched.perturbers.parameters(), lr=1e-2)
    patched.train()
    patched(x).mean().backward()
    opt.step()
    assert state_dict_hash(net) == before
    assert all(not p.requires_grad for p in net.parameters())
    assert not net.training


def test_frozen_hash_detects_a_change():
    net, _ = create_segmentor("unet", tiny=True)
    h = state_dict_hash(net)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-6
    assert state_dict_hash(net) != h
