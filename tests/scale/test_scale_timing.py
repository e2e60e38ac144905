"""Timing that means something: interleaved wall-clock rounds with bootstrap intervals, a fixed thread
count, epoch clocks read from the trainers' progress bars, and the bench sections built on them."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from applefair.engine.progress import progress_bar, watch_progress
from applefair.workflows.bench import BenchConfig
from applefair.workflows.bench.timing import EpochClock, fixed_threads, interleaved, project, ratio_ci


def test_interleaved_rounds_alternate_and_stop_once_the_interval_is_narrow():
    calls: list[str] = []

    def fn(name: str, seconds: float):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    # sleeps of 10 and 30 ms: a loaded machine adds wake-up delays to both, so the ratio is near, not at, 3
    out = interleaved({"a": fn("a", 0.01), "b": fn("b", 0.03)}, "a", min_repeats=4, max_repeats=60,
                      max_seconds=10, width=1.0)
    assert out["clock"] == "wall" and out["ci_ok"] and 4 <= out["repeats"] < 60
    r = out["ratios"]["b"]
    assert 1.8 < r["ratio"] < 3.6 and r["ci95"][0] <= r["ratio"] <= r["ci95"][1]
    assert r["ci95"][1] - r["ci95"][0] < 1.0
    rounds = [calls[i:i + 2] for i in range(2, len(calls), 2)]  # after the warm-up calls
    assert ["a", "b"] in rounds and ["b", "a"] in rounds  # neither always runs first
    assert len(out["times_ms"]["a"]) == len(out["times_ms"]["b"]) == out["repeats"]
    # a time limit ends the rounds however wide the interval still is
    slow = interleaved({"a": fn("a", 0.001), "b": fn("b", 0.001)}, "a", min_repeats=2, max_repeats=1000,
                       max_seconds=0.05, width=1e-9)
    assert not slow["ci_ok"] and slow["repeats"] < 1000


def test_ratio_interval_pairs_rounds():
    ref = [1.0, 2.0, 3.0, 4.0, 5.0]  # load drifting upwards, hitting both alike
    out = ratio_ci([1.1 * v for v in ref], ref)
    assert out["ratio"] == pytest.approx(1.1) and out["ci95"] == pytest.approx([1.1, 1.1], abs=1e-3)
    assert ratio_ci([2.0], [1.0]) == {"ratio": 2.0, "ci95": None}


def test_fixed_threads_sets_and_restores():
    before = torch.get_num_threads()
    with fixed_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_epoch_clock_reads_the_per_epoch_bar_and_projects():
    seen = []
    with EpochClock(epochs=3) as clock, watch_progress(seen.append):
        with progress_bar(quiet=True) as bar:
            other = bar.add_task("evaluate", total=3, info="")  # validation bars are not epochs
            task = bar.add_task("fine-tune", total=3, info="")
            for _ in range(3):
                time.sleep(0.02)
                bar.update(other, advance=1)
                bar.update(task, advance=1, info="")
        time.sleep(0.01)
    assert len(seen) == 6 and len(clock.stamps()) == 3
    split = clock.split()
    assert split["first_s"] >= 0.02 and len(split["epoch_s"]) == 2 and split["tail_s"] >= 0.01
    assert project(split, 30) == pytest.approx(split["first_s"] + 29 * np.median(split["epoch_s"]) + split["tail_s"])
    assert project({}, 30) is None


@pytest.fixture()
def no_full_collection(monkeypatch):
    """Measure's full garbage collection takes about a second in a large test process; not needed here."""
    import applefair.workflows.bench.measure as measure

    monkeypatch.setattr(measure, "release_memory", lambda: None)


def test_realistic_section_on_tiny_presets(tmp_path, no_full_collection):
    from applefair.workflows.bench.realistic import realistic_cost

    cfg = BenchConfig(realistic_tiny=True, realistic_n=16, realistic_repeats=2, methods=("groupdro",))
    out = realistic_cost(cfg, tmp_path, "sam_vit_b_256")
    assert out["image_size"] == 64 and out["epochs"] == 2 and out["images"] == {"train": 8, "val": 4, "test": 4}
    assert out["orders"] == [["groupdro", "apple_cached"], ["apple_cached", "groupdro"]]  # interleaved rounds
    for name in ("groupdro", "apple_cached"):
        runs = out["runs"][name]
        assert len(runs) == 2 and all(r["seconds"] > 0 and len(r["epoch_s"]) == 1 for r in runs), runs
        s = out["summary"][name]
        assert s["projected_s_30"] == pytest.approx(s["first_s"] + 29 * s["epoch_s"] + s["tail_s"], abs=2e-3)
    apple, base = out["summary"]["apple_cached"], out["summary"]["groupdro"]
    assert out["ratio"] == pytest.approx(apple["seconds"]["median"] / base["seconds"]["median"], rel=1e-3)
    assert out["ratio_30_derived"] == pytest.approx(apple["projected_s_30"] / base["projected_s_30"], rel=1e-2)
    assert out["cache_build"]["seconds"] > 0 and out["cache_build"]["images"] == 12


def test_cache_memory_rows_follow_the_store(tmp_path, no_full_collection):
    from applefair.workflows.bench.cachestudy import cache_memory

    cfg = BenchConfig(cache_sizes=(20, 40), cache_latent=(8, 4, 4))
    out = cache_memory(cfg, tmp_path)
    rows = {(r["n"], r["store"], r["dtype"]): r for r in out["rows"]}
    assert len(rows) == 8 and all("error" not in r for r in rows.values()), out
    assert rows[(40, "disk", "fp32")]["store_mb"] == pytest.approx(2 * rows[(40, "disk", "fp16")]["store_mb"], abs=0.1)
    assert rows[(40, "memory", "fp32")]["store_mb"] == pytest.approx(40 * 8 * 4 * 4 * 4 / 2**20, abs=0.1)


@pytest.mark.slow
def test_cache_dtype_study_builds_each_cache_as_asked(tmp_path, no_full_collection):
    from applefair.workflows.bench.cachestudy import cache_dtype

    cfg = BenchConfig(tiny=True, size=64, dtype_n=40, dtype_epochs=1, dtype_seeds=(0,), deploy_epochs=1, batch_size=8)
    out = cache_dtype(cfg, tmp_path)
    row = out["seeds"]["0"]
    assert row["fp32"]["cache_dtypes_built"] == ["fp32", "fp32"]  # training and validation caches
    assert row["fp32_repeat"]["cache_dtypes_built"] == ["fp32", "fp32"]
    for dtype in ("fp16", "bf16"):
        assert row[dtype]["cache_dtypes_built"] == [dtype, dtype]
        change = row[dtype]["vs_fp32"]["dice"]
        assert change["diff"] == pytest.approx(row[dtype]["dice"] - row["fp32"]["dice"], abs=1e-4)
        assert out[f"{dtype}_minus_fp32"]["dice"]["per_seed"] == [change["diff"]]
