"""bench/gpu_study.py, the study prepared for a GPU, runs end to end on the CPU at toy sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_study.py"


@pytest.mark.slow
def test_gpu_study_toy_run_writes_every_part(tmp_path, monkeypatch):
    import applefair.workflows.bench.measure as measure

    monkeypatch.setattr(measure, "release_memory", lambda: None)  # a full gc per step is slow in a test process
    spec = importlib.util.spec_from_file_location("gpu_study", SCRIPT)
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_study", study)  # dataclasses look their module up there
    spec.loader.exec_module(study)
    assert study.main(["--toy", "--device", "cpu", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    result = json.loads((tmp_path / study.JSON).read_text())
    assert (tmp_path / study.MD).is_file() and result["sizes"]["toy"] and result["device"] == "cpu"
    parts = result["parts"]
    assert set(parts) == {"nccl", "cost_sam_1024", "fairness"} and not any("error" in p for p in parts.values())

    nccl = parts["nccl"]  # gloo without a GPU; the same code asks for NCCL on one
    assert nccl["backend"] == nccl["backend_asked"] == "gloo"
    assert nccl["all_reduce_ok"] and nccl["ddp_step_ok"] and nccl["apple_completed"]

    cost = parts["cost_sam_1024"]
    assert cost["model"] == "sam_vit_b_1024" and cost["encoder_s_per_image"] > 0
    assert cost["cache_build"]["fp32"]["s_per_1000"] > 0
    for name in ("apple_fp32", "apple_default", "resampling", "groupdro", "febs", "adversarial"):
        run = cost["runs"][name]
        assert run["epoch_s_per_1000"] > 0 and run["projected_full_s"] > run["seconds"], (name, run)
    assert cost["projected_ratio_fp32"] > 0 and cost["cheapest_baseline"] in study.RETRAINING

    fair = parts["fairness"]
    assert fair["benchmark"].startswith("nodules, spurious") and sum(fair["images"].values()) == 40
    for model in ("sam_vit_b_256", "unet_large"):
        row = fair["models"][model]
        for when in ("before", "after"):
            lo, hi = row[when]["dice_gap_ci95"]
            assert lo <= row[when]["dice_gap"] <= hi
        assert row["gap_change"]["diff"] == pytest.approx(row["after"]["dice_gap"] - row["before"]["dice_gap"],
                                                          abs=1e-3)
