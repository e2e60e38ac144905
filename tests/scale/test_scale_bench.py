"""The benchmark's measuring pieces report real, consistent numbers on tiny sizes."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from applefair.workflows.bench import BenchConfig
from applefair.workflows.bench.measure import Measure, attempt
from applefair.workflows.bench.tables import markdown, tables
from applefair.workflows.bench.workloads import (
    apple_epoch_cost,
    inference_overhead,
    load_splits,
    mitigation_cost,
    repeated_manifest,
)


def test_measure_sees_time_and_memory():
    with Measure() as m:
        block = torch.ones(16, 2**20)  # 64 MiB of float32
        block += 1
        time.sleep(0.05)
    assert m.seconds >= 0.05
    assert m.peak_mb >= m.start_mb
    assert m.delta_mb > 40, m.as_dict()
    del block


def test_attempt_turns_failures_into_reasons():
    assert attempt(lambda: {"x": 1}) == {"x": 1}
    out = attempt(lambda: 1 / 0)
    assert out["error"].startswith("ZeroDivisionError")


def test_repeated_manifest_has_unique_ids_and_shared_files(tiny_manifest):
    path = repeated_manifest(tiny_manifest, 150, "rep.csv")
    frame = pd.read_csv(path)
    assert len(frame) == 150 and frame["id"].is_unique
    assert frame["image"].nunique() <= 60 and set(frame["split"]) == {"train"}


def test_inference_overhead_tiny_unet():
    out = inference_overhead("unet", size=32, repeats=3, tiny=True, widths=(8, 32), max_seconds=2.0)
    assert out["deployed_params"] > 0 and out["perturber_params"] > 0
    assert out["params_ratio"] == pytest.approx(out["perturber_params"] / out["deployed_params"], rel=1e-3)
    assert out["params_ratio_by_width"]["8"] < out["params_ratio_by_width"]["32"]
    # the default perturber is what is timed: the paper's U shape, the widest within 5% of the model's parameters,
    # or width 32 where none is (a tiny U-Net)
    assert out["perturber"]["config"] == "auto" and out["perturber"]["kind"] == "unet"
    width = str(out["perturber"]["width"])
    assert out["params_ratio"] == pytest.approx(out["params_ratio_by_width"][width], rel=1e-3)
    assert out["params_ratio"] <= 0.05 or width == "32"
    assert out["flops_ratio"] > 1.0 and out["conv_w8"]["flops_ratio"] > 1.0  # counted, so exact
    assert out["clock"] == "wall" and out["threads"] == torch.get_num_threads()
    for b in (1, 16):
        lat, timed = out[f"latency_ms_b{b}"], out[f"latency_b{b}"]
        assert lat["deployed"] > 0 and lat["mitigated"] > 0
        # deployed, mitigated and the smallest option timed in the same interleaved rounds
        assert set(timed["times_ms"]) == {"deployed", "mitigated", "conv_w8"} and timed["repeats"] >= 3
        assert all(len(v) == timed["repeats"] for v in timed["times_ms"].values())
        assert out[f"latency_ratio_b{b}"] == pytest.approx(
            np.median(timed["times_ms"]["mitigated"]) / np.median(timed["times_ms"]["deployed"]), rel=0.01)
        lo, hi = out[f"latency_ratio_b{b}_ci95"]
        assert lo <= out[f"latency_ratio_b{b}"] <= hi


@pytest.mark.slow
def test_mitigation_cost_and_epoch_clock_on_tiny_data(tmp_path, tiny_manifest, monkeypatch):
    import applefair.baselines as baselines

    real, given = baselines.get_method, []

    class Spy:  # records the options each method is fitted with, then fits for real
        def __init__(self, name):
            self.name, self.method = name, real(name)

        def fit(self, *args):
            given.append((self.name, args[6]))
            return self.method.fit(*args)

    monkeypatch.setattr(baselines, "get_method", Spy)
    cfg = BenchConfig(n=40, size=32, deploy_epochs=1, epochs=1, batch_size=8, methods=("resampling",))
    out = mitigation_cost(cfg, tmp_path, "unet", tiny=True)
    # the baselines train in fp32, so APPLE is timed in fp32 too (bf16 only beside it, on a GPU)
    assert [(n, o["precision"], o["cache"]) for n, o in given if n == "apple"] == [("apple", "fp32", "memory"),
                                                                                   ("apple", "fp32", "off")]
    assert "apple_cached_bf16" not in out["runs"]
    assert out["cheapest_baseline"] == "resampling"
    runs = out["runs"]
    for name in ("resampling", "apple_cached", "apple_uncached"):
        assert runs[name]["seconds"] > 0, runs[name]
    assert out["ratio"] == pytest.approx(runs["apple_cached"]["seconds"] / runs["resampling"]["seconds"], rel=1e-3)
    assert runs["apple_cached"]["trainable_params"] != runs["resampling"]["trainable_params"]

    split, groups = load_splits(tiny_manifest, cache=False)
    row = apple_epoch_cost(split["train"], split["val"], groups, "disk", tmp_path, 0, tiny=True)
    assert row["s_per_epoch"] is not None and 0 < row["s_per_epoch"] < row["total_s"], row


def test_tables_and_markdown_show_missing_values_as_such():
    result = {"machine": {"cores": 2}, "seconds": 1.0,
              "mitigation": {"unet": {"error": "RuntimeError: boom"}},
              "inference": {"sam": {"error": "no 'sam' model"}},
              "scaling": {"dataset_size": [{"n": 10, "image_size": 64, "cache": "disk", "s_per_epoch": None}]},
              "evaluation": {"n": 5, "s_per_1000_dice_iou": 1.5},
              "mitigation_cost_ratio": None, "inference_latency_ratio": 1.2, "params_ratio": 0.01,
              "targets": {"mitigation_cost_ratio": 0.25, "inference_latency_ratio": 1.1, "params_ratio": 0.05},
              "met": {"mitigation_cost_ratio": None, "inference_latency_ratio": False, "params_ratio": True}}
    titles = [t for t, _, _ in tables(result)]
    assert any("Mitigation cost: unet" in t for t in titles)
    text = markdown(result, "applefair bench --quick")
    assert "RuntimeError: boom" in text and "no 'sam' model" in text
    assert "| mitigation_cost_ratio | n/a | <= 0.25 | n/a |" in text
    assert "| inference_latency_ratio | 1.200 | <= 1.1 | NO |" in text


def test_bench_runs_only_the_asked_sections_on_the_asked_device(tmp_path):
    from applefair.workflows.bench import run_bench

    cfg = BenchConfig(tiny=True, eval_n=16, sections=("evaluation",), device="cpu")
    result = run_bench(cfg)
    assert set(result) >= {"evaluation", "met"} and "mitigation" not in result and "scaling" not in result
    assert result["evaluation"]["device"] == "cpu" and result["evaluation"]["s_per_1000_dice_iou"] > 0
    assert result["met"]["params_ratio"] is None  # not measured: not met, not failed


def test_bench_options_are_checked(tmp_path):
    from typer.testing import CliRunner

    from applefair.cli import app
    from applefair.errors import InputError

    runner = CliRunner()
    cases = [(["--only", "speed"], "unknown section(s) speed"), (["--sizes", "1k"], "--sizes 1k")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA"))
    for args, message in cases:
        out = runner.invoke(app, ["bench", *args, "--out", str(tmp_path)])
        assert isinstance(out.exception, InputError) and message in str(out.exception), out.output


def test_bench_settings_set_the_realistic_section(tmp_path):
    """The realistic section's presets, epochs and rounds come from --config; an unknown preset is bad input."""
    from applefair.engine.config import load_config
    from applefair.errors import InputError
    from applefair.workflows.bench import BenchSettings

    p = tmp_path / "bench.yaml"
    p.write_text("only: [realistic]\nrealistic_models: [sam_vit_b_256]\nrealistic_epochs: 4\nrealistic_repeats: 1\n"
                 "realistic_latency_seconds: 60\n")
    cfg = load_config(p, BenchSettings).bench_config("cpu")
    assert (cfg.realistic_models, cfg.realistic_epochs, cfg.realistic_repeats) == (("sam_vit_b_256",), 4, 1)
    assert cfg.realistic_latency_seconds == 60
    assert cfg.sections == ("realistic",)
    default = BenchSettings().bench_config("cpu")
    assert default.realistic_epochs == 2 and len(default.realistic_models) == 2
    p.write_text("realistic_models: [sam_vit_z]\n")
    with pytest.raises(InputError, match="sam_vit_z"):
        load_config(p, BenchSettings)
