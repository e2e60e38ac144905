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
from applefair.workflows.bench.config import REALISTIC_TARGETS, TARGETS, BenchConfig
from applefair.workflows.bench.latency import inference_overhead
from applefair.workflows.bench.measure import attempt, machine
from applefair.workflows.bench.timing import fixed_threads
from applefair.workflows.bench.workloads import evaluation_throughput, mitigation_cost, scaling


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="applefair-bench-") as d:
        yield Path(d)


def run_bench(cfg: BenchConfig, quiet: bool = True, step: Callable[[str], None] | None = None) -> dict:
    """Every measurement, with torch's thread count fixed to `cfg.threads`; returns the bench.json content
    (see docs/performance.md)."""
    t0, c0 = time.perf_counter(), time.process_time()
    note = step or (lambda _s: None)
    with fixed_threads(cfg.threads) as threads:
        result: dict = {"machine": machine(), "threads": threads, "config": cfg.to_dict(), "targets": dict(TARGETS)}
        want = set(cfg.sections)
        with _workdir() as work:
            _sections(cfg, work, result, want, note, quiet)
        result["machine_after"] = machine()
    result["met"] = {
        "mitigation_cost_ratio": _le(result.get("mitigation_cost_ratio"), TARGETS["mitigation_cost_ratio"]),
        "mitigation_cost_ratio_aim": _le(result.get("mitigation_cost_ratio"), TARGETS["mitigation_cost_ratio_aim"]),
        "inference_latency_ratio": _le(result.get("inference_latency_ratio"), TARGETS["inference_latency_ratio"]),
        "params_ratio": _le(result.get("params_ratio"), TARGETS["params_ratio"]),
    }
    if "realistic" in result:
        result["realistic_targets"] = dict(REALISTIC_TARGETS)
        result["met"].update(_realistic_met(result["realistic"]))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["cpu_seconds"] = round(time.process_time() - c0, 1)  # ~ wall time on an idle machine (1 thread)
    return result


def _sections(cfg: BenchConfig, work: Path, result: dict, want: set[str], note: Callable[[str], None],
              quiet: bool) -> None:
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
    if "realistic" in want:
        from applefair.workflows.bench.realistic import realistic

        note(f"realistic presets ({', '.join(cfg.realistic_models)}): mitigation cost and latency")
        t = time.perf_counter()
        result["realistic"] = {**realistic(cfg, work, quiet), "seconds": None}
        result["realistic"]["seconds"] = round(time.perf_counter() - t, 1)
        _realistic_top(result)
    if "cache_memory" in want:
        from applefair.workflows.bench.cachestudy import cache_memory

        note("latent cache: peak memory vs data-set size")
        result["cache_memory"] = attempt(lambda: cache_memory(cfg, work))
    if "cache_dtype" in want:
        from applefair.workflows.bench.cachestudy import cache_dtype

        note("latent cache: APPLE with a half-precision cache vs fp32")
        result["cache_dtype"] = attempt(lambda: cache_dtype(cfg, work, quiet))


def _realistic_top(result: dict) -> None:
    """The realistic presets' ratios next to the small models' (`*_by_model`)."""
    real = result["realistic"]
    for model, cost in real.get("mitigation", {}).items():
        if cost.get("ratio") is not None:
            result.setdefault("mitigation_cost_ratio_by_model", {})[model] = cost["ratio"]
        if cost.get("ratio_30_derived") is not None:
            result.setdefault("mitigation_cost_ratio_30_derived_by_model", {})[model] = cost["ratio_30_derived"]
    for model, inf in real.get("inference", {}).items():
        for key, field_ in (("inference_latency_ratio_by_model", "latency_ratio_b1"),
                            ("inference_latency_ratio_b16_by_model", "latency_ratio_b16"),
                            ("params_ratio_by_model", "params_ratio")):
            if field_ in inf:
                result.setdefault(key, {})[model] = inf[field_]


def _realistic_met(real: dict) -> dict:
    """Each realistic preset's targets, met or not (None: not measured)."""
    met = {}
    for model, cost in real.get("mitigation", {}).items():
        met[f"realistic_cost_ratio:{model}"] = _le(cost.get("ratio"), REALISTIC_TARGETS["cost_ratio"])
        met[f"realistic_cost_ratio_30_derived:{model}"] = _le(cost.get("ratio_30_derived"),
                                                              REALISTIC_TARGETS["cost_ratio_30_derived"])
    for model, inf in real.get("inference", {}).items():
        for key in ("latency_ratio_b1", "latency_ratio_b16", "params_ratio"):
            met[f"realistic_{key}:{model}"] = _le(inf.get(key), REALISTIC_TARGETS[key])
    return met


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

    timing = {"seed": cfg.seed, "device": cfg.device, "max_seconds": cfg.latency_seconds}
    inference = {"unet": attempt(lambda: inference_overhead("unet", cfg.latency_size, cfg.latency_repeats, **timing))}
    if "sam" in list_models():
        size = 64 if cfg.sam_tiny else int(cfg.sam_args.get("img_size", 256))
        inference["sam"] = attempt(lambda: inference_overhead("sam", size, cfg.latency_repeats, tiny=cfg.sam_tiny,
                                                               **timing, **cfg.sam_args))
    else:
        inference["sam"] = {"error": "no 'sam' model in the registry (applefair.models.list_models())"}
    result["inference"] = inference
    for key, field_ in (("inference_latency_ratio", "latency_ratio_b1"),
                        ("inference_latency_ratio_b16", "latency_ratio_b16"), ("params_ratio", "params_ratio"),
                        ("inference_flops_ratio", "flops_ratio")):
        vals = {m: v[field_] for m, v in inference.items() if field_ in v}
        result[key] = max(vals.values()) if vals else None  # the worse of the two models
        result[f"{key}_by_model"] = vals


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
