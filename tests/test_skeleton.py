"""End-to-end checks of the walking skeleton: `applefair demo --quick` and its output contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from applefair.apple.patch import PatchedSegmentor, perturbers_for
from applefair.engine.io import state_dict_hash
from applefair.metrics.outcome import explain_use
from applefair.models.registry import create_segmentor, load_model_dir

FAIRNESS_KEYS = {"dice_delta", "dice_skewness", "dice_std", "dice_worst", "es_dice_sum", "es_dice_std"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run([sys.executable, "-m", "applefair", "demo", "--quick", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


CASES = ("misused_cue", "difficulty")


def test_demo_quick_writes_run_folder(demo_run):
    out, proc = demo_run
    for rel in ("config.yaml", "cases.json", "report.md", "report.html", "run.log"):
        assert (out / rel).is_file(), rel
    for case in CASES:
        for rel in ("config.yaml", "data/manifest.csv", "deployed/model.safetensors", "deployed/model.yaml",
                    "before/metrics.json", "before/per_sample.csv", "after/metrics.json", "after/per_sample.csv",
                    "patch.safetensors", "paired.json", "leakage.json", "use.json", "frozen_check.json", "report.md",
                    "report.html", "run.log"):
            assert (out / case / rel).is_file(), f"{case}/{rel}"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    assert proc.stdout.count("Deployed weights unchanged: yes") == 2
    assert " ".join(proc.stdout.split()).count("APPLE played 3 games (seeds 0, 1000, 2000)") == 2  # the default
    for case in CASES:
        assert case in proc.stdout


def test_demo_cases_differ_in_their_data(demo_run):
    out, _ = demo_run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: v["bias"] for k, v in config["cases"].items()} == {"misused_cue": "spurious", "difficulty": "contrast"}
    for case, bias in (("misused_cue", "spurious"), ("difficulty", "contrast")):
        assert yaml.safe_load((out / case / "config.yaml").read_text())["bias"] == bias
    a, b = (pd.read_csv(out / case / "data" / "manifest.csv") for case in CASES)
    assert len(a) == len(b)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage", ["before", "after"])
def test_demo_metrics_schema(demo_run, case, stage):
    out, _ = demo_run
    m = json.loads((out / case / stage / "metrics.json").read_text())
    assert m["attribute"] == "sex"
    assert {"n", "dice", "iou"} <= set(m["overall"])
    assert set(m["groups"]) == {"F", "M"}
    for g in m["groups"].values():
        assert {"n", "dice", "iou"} <= set(g)
    assert FAIRNESS_KEYS <= set(m["fairness"])
    per = pd.read_csv(out / case / stage / "per_sample.csv")
    assert {"id", "group", "dice", "iou"} <= set(per.columns)
    assert len(per) == m["overall"]["n"]
    assert per["dice"].mean() == pytest.approx(m["overall"]["dice"])
    manifest = pd.read_csv(out / case / "data" / "manifest.csv")
    assert len(per) == (manifest["split"] == "test").sum()


@pytest.mark.parametrize("case", CASES)
def test_demo_report_states_frozen_check_and_gap(demo_run, case):
    out, _ = demo_run
    report = (out / case / "report.md").read_text()
    check = json.loads((out / case / "frozen_check.json").read_text())
    assert "| unchanged | yes |" in report and f"| hash_before | {check['hash_before']} |" in report
    before = json.loads((out / case / "before" / "metrics.json").read_text())
    assert f"{100 * before['fairness']['dice_delta']:.1f}" in report
    assert "ci" in before  # bootstrap confidence intervals for every aggregate
    assert "Outcome:" in report


def test_demo_top_report_explains_each_case(demo_run):
    """cases.json and the side-by-side report hold, per case, the numbers of its own files and two sentences:
    what the use measure says about the deployed model, and the outcome."""
    out, proc = demo_run
    cases = json.loads((out / "cases.json").read_text())
    assert list(cases) == list(CASES)
    top = (out / "report.md").read_text()
    for name, case in cases.items():
        before = json.loads((out / name / "before" / "metrics.json").read_text())
        after = json.loads((out / name / "after" / "metrics.json").read_text())
        use = json.loads((out / name / "use.json").read_text())
        assert case["gap_before"] == pytest.approx(before["fairness"]["dice_delta"])
        assert case["gap_after"] == pytest.approx(after["fairness"]["dice_delta"])
        assert case["use"]["verdict"] == use["deployed"]["verdict"]
        assert case["outcome"] in ("closed", "kept", "open")
        assert case["outcome_sentence"] in top.replace("\\", "") and case["outcome_sentence"] in " ".join(
            proc.stdout.split())
        sentence = explain_use(case["use"])
        assert sentence is not None and sentence in top.replace("\\", "")
    # the top folder's page: the cases side by side and its configuration, no single-run sections
    assert "## Cases side by side" in top and "## Configuration" in top and "| n | " in top
    assert "## Results on the test split" not in top and "## Definitions" not in top


@pytest.mark.parametrize("case", CASES)
def test_deployed_weights_hash_matches_saved_model(demo_run, case):
    out, _ = demo_run
    net, _ = load_model_dir(out / case / "deployed")
    check = json.loads((out / case / "frozen_check.json").read_text())
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
