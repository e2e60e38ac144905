"""All measurements of `applefair bench`, gathered into the bench.json content."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from applefair.engine.io import write_json, write_text
from applefair.engine.runfolder import BENCH_JSON, BENCH_MD
from applefair.errors import InputError
from applefair.workflows.bench.config import TARGETS, BenchConfig
from applefair.workflows.bench.measure import attempt, machine
from applefair.workflows.bench.workloads import evaluation_throughput, inference_overhead, mitigation_cost, scaling


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="applefair-bench-") as d:
        yield Path(d)


def run_bench(cfg: BenchConfig, quiet: bool = True, step: Callable[[str], None] | None = None) -> dict:
    """Every measurement; returns the bench.json content (see docs/performance.md)."""
    t0, c0 = time.perf_counter(), time.process_time()
    note = step or (lambda _s: None)
    result: dict = {"machine": machine(), "config": cfg.to_dict(), "targets": dict(TARGETS)}
    want = set(cfg.sections)
    with _workdir() as work:
        if "mitigation" in want:
            note("mitigation cost (APPLE vs retraining baselines)")
            _mitigation(cfg, work, result, quiet)
        if "inference" in want:
            note("inference overhead (U-Net, SAM-like)")
            _inference(cfg, result)
        if want & {"dataset_size", "image_size"}:
            note("scaling (data-set size, image size, cache in memory vs on disk)")
            result["scaling"] = attempt(lambda: scaling(cfg, work))
        if "evaluation" in want:
            note("evaluation throughput")
            result["evaluation"] = attempt(lambda: evaluation_throughput(cfg, work))
    result["met"] = {
        "mitigation_cost_ratio": _le(result.get("mitigation_cost_ratio"), TARGETS["mitigation_cost_ratio"]),
        "mitigation_cost_ratio_aim": _le(result.get("mitigation_cost_ratio"), TARGETS["mitigation_cost_ratio_aim"]),
        "inference_latency_ratio": _le(result.get("inference_latency_ratio"), TARGETS["inference_latency_ratio"]),
        "params_ratio": _le(result.get("params_ratio"), TARGETS["params_ratio"]),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["cpu_seconds"] = round(time.process_time() - c0, 1)  # ~ wall time on an idle machine (1 thread)
    return result


def _le(value: float | None, target: float) -> bool | None:
    return None if value is None else bool(value <= target)


def _mitigation(cfg: BenchConfig, work: Path, result: dict, quiet: bool) -> None:
    from applefair.models.registry import list_models

    cost = {"unet": attempt(lambda: mitigation_cost(cfg, work, "unet", quiet=quiet))}
    if "sam" in list_models():
        cost["sam"] = attempt(lambda: mitigation_cost(cfg, work, "sam", tiny=True, quiet=quiet))
    else:
        cost["sam"] = {"error": "no 'sam' model in the registry (applefair.models.list_models())"}
    result["mitigation"] = cost
    for key in ("ratio", "ratio_uncached", "ratio_cpu", "ratio_uncached_cpu"):
        vals = {m: c[key] for m, c in cost.items() if c.get(key) is not None}
        top = "mitigation_cost_" + key
        result[top] = max(vals.values()) if vals else None  # the worse model
        result[f"{top}_by_model"] = vals
    if result["mitigation_cost_ratio"] is None:
        result["mitigation_cost_ratio_reason"] = "; ".join(
            f"{m}: {c.get('ratio_reason') or c.get('error')}" for m, c in cost.items())


def _inference(cfg: BenchConfig, result: dict) -> None:
    from applefair.models.registry import list_models

    inference = {"unet": attempt(lambda: inference_overhead("unet", cfg.latency_size, cfg.latency_repeats,
                                                              seed=cfg.seed, device=cfg.device))}
    if "sam" in list_models():
        size = 64 if cfg.sam_tiny else int(cfg.sam_args.get("img_size", 256))
        inference["sam"] = attempt(lambda: inference_overhead("sam", size, cfg.latency_repeats, tiny=cfg.sam_tiny,
                                                               seed=cfg.seed, device=cfg.device, **cfg.sam_args))
    else:
        inference["sam"] = {"error": "no 'sam' model in the registry (applefair.models.list_models())"}
    result["inference"] = inference
    for key, field_ in (("inference_latency_ratio", "latency_ratio_b1"),
                        ("inference_latency_ratio_b16", "latency_ratio_b16"), ("params_ratio", "params_ratio"),
                        ("inference_flops_ratio", "flops_ratio")):
        vals = [v[field_] for v in inference.values() if field_ in v]
        result[key] = max(vals) if vals else None  # the worse of the two models


def check_out(out: str | os.PathLike) -> None:
    """Bad input before minutes of measuring: `out` must be a folder (or not exist yet)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"{out}: exists and is not a folder (expected an output folder for {BENCH_JSON})")


def write_bench(out: str | os.PathLike, result: dict, command: str) -> None:
    """bench.json (every number) and bench.md (the same as tables) in folder `out`."""
    from applefair.workflows.bench.tables import markdown

    out = Path(out)
    check_out(out)
    result["command"] = command
    write_json(out / BENCH_JSON, result)
    write_text(out / BENCH_MD, markdown(result, command))
