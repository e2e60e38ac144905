"""The regime that matters: deployment-size models (the zoo's presets) on the CPU.

Mitigation cost: APPLE (latent cache in memory, fp32 like the baselines) against every retraining
baseline on a SAM ViT-B at 256 px (`sam_vit_b_256`) and `unet_large`, a few dozen images, the
same epochs, batch size and data for all. The methods run in interleaved rounds (the order rotating
and reversing), so load drift on a shared machine hits all of them. Each fit is timed whole and
split by its epoch clock (the moments its per-epoch progress bar advances, `timing.EpochClock`):
the time to the end of epoch 1 (set-up, epoch-0 validation, the cache's build, epoch 1), the later
epochs, and the tail. The cache's build is also timed on its own. From those measured parts the
cost at the default 30 epochs is *derived* (`timing.project`), and labelled so.

Inference: latency of each preset deployed vs patched (`latency.inference_overhead`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from applefair.data.synthetic import generate
from applefair.engine.runfolder import MANIFEST
from applefair.workflows.bench.config import BenchConfig
from applefair.workflows.bench.latency import inference_overhead
from applefair.workflows.bench.measure import Measure, attempt
from applefair.workflows.bench.timing import EpochClock, median_ci, project, ratio_ci
from applefair.workflows.bench.workloads import load_splits

PROJECT_EPOCHS = 30  # AppleConfig's default epochs: the run length the derived ratio is for
APPLE_RUN = "apple_cached"


def model_size(cfg: BenchConfig, model: str) -> int:
    """The input side used on the CPU: the preset's own, at most `realistic_size` (tiny: 64 px)."""
    from applefair.models.registry import model_info

    if cfg.realistic_tiny:
        return 64
    own = model_info(model).get("size") if model in _presets() else None
    return min(own or cfg.realistic_size, cfg.realistic_size)


def _presets() -> list[str]:
    from applefair.models.registry import list_presets

    return list_presets()


def _rounds(names: list[str], repeats: int) -> list[list[str]]:
    """The order of every round: rotating, and reversed every other pass."""
    out = []
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        out.append(order if (r // len(names)) % 2 == 0 else order[::-1])
    return out


def realistic_cost(cfg: BenchConfig, work: Path, model: str, quiet: bool = True) -> dict:
    """Wall time of APPLE and each retraining baseline on `model`, whole and split by epochs (see module doc)."""
    from applefair.apple.cache import LatentCache
    from applefair.baselines import get_method
    from applefair.baselines.base import Budget
    from applefair.models.registry import create_segmentor

    size = model_size(cfg, model)
    folder = work / f"realistic-{size}"
    manifest = folder / MANIFEST if (folder / MANIFEST).is_file() else generate(
        folder, n=cfg.realistic_n, size=size, seed=cfg.seed, split_fractions=(0.5, 0.25, 0.25))
    split, groups = load_splits(manifest)
    for ds in split.values():  # decode once: data loading is not what is timed
        for i in range(len(ds)):
            ds[i]
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    net, spec = create_segmentor(model, tiny=cfg.realistic_tiny)  # random weights: timing does not depend on them
    net.to(dev).eval()
    budget = Budget(epochs=cfg.realistic_epochs, batch_size=cfg.realistic_batch_size, seed=cfg.seed)
    variants = {m: (m, None) for m in cfg.methods}
    # one game: the epoch clock and the projection are per game; the default plays `restarts` of them
    variants[APPLE_RUN] = ("apple", {"augment": False, "precision": "fp32", "cache": "memory", "cache_dtype": "fp32",
                                     "restarts": 1})

    def fit(method: str, options: dict | None) -> dict:
        with Measure() as m, EpochClock(budget.epochs) as clock:
            res = get_method(method).fit(net, spec, split["train"], split["val"], groups, budget, options, quiet)
        return {**m.as_dict(), **clock.split(), "trainable_params": res.trainable_params,
                "selected_epoch": res.selected_epoch, "load_average": _load()}

    runs: dict[str, list[dict]] = {k: [] for k in variants}
    orders = _rounds(list(variants), cfg.realistic_repeats)
    for order in orders:
        for k in order:
            runs[k].append(attempt(lambda k=k: fit(*variants[k])))

    def build() -> None:
        for s in ("train", "val"):
            LatentCache.build(net, [spec.site], split[s], batch_size=budget.batch_size, dtype="fp32")

    with Measure() as m:
        attempt(build)
    images = {k: len(v) for k, v in split.items()}
    out = {"model": model, "tiny": cfg.realistic_tiny, "args": spec.args, "image_size": size, "device": str(dev),
           "deployed_params": sum(p.numel() for p in net.parameters()), "images": images,
           "epochs": budget.epochs, "batch_size": budget.batch_size, "repeats": cfg.realistic_repeats,
           "orders": orders, "threads": torch.get_num_threads(),
           "cache_build": {**m.as_dict(), "images": images["train"] + images["val"],
                           "s_per_image": round(m.seconds / max(images["train"] + images["val"], 1), 4)},
           "runs": runs}
    out.update(summarise(runs, list(cfg.methods), budget.epochs))
    return out


def _load() -> list[float] | None:
    from applefair.workflows.bench.measure import machine

    return machine()["load_average"]


def summarise(runs: dict[str, list[dict]], baselines: list[str], epochs: int) -> dict:
    """Per method: median seconds (bootstrap interval), first/epoch/tail parts and the projection to
    `PROJECT_EPOCHS`; APPLE / cheapest baseline measured at `epochs` and derived at PROJECT_EPOCHS."""
    per: dict[str, dict] = {}
    for k, rs in runs.items():
        ok = [r for r in rs if "seconds" in r]
        if not ok:
            per[k] = {"error": (rs[0].get("error") if rs else "did not run")}
            continue
        secs = [r["seconds"] for r in ok]
        later = [e for r in ok for e in r.get("epoch_s", [])]
        first = [r["first_s"] for r in ok if "first_s" in r]
        tail = [r["tail_s"] for r in ok if "tail_s" in r]
        parts = {"first_s": statistics.median(first), "epoch_s": [statistics.median(later)],
                 "tail_s": statistics.median(tail)} if first and later and tail else {}
        per[k] = {"seconds": median_ci(secs), "cpu_seconds": statistics.median(r["cpu_seconds"] for r in ok),
                  "first_s": parts.get("first_s"), "epoch_s": parts.get("epoch_s", [None])[0],
                  "tail_s": parts.get("tail_s"),
                  f"projected_s_{PROJECT_EPOCHS}": _round(project(parts, PROJECT_EPOCHS)),
                  "peak_rss_delta_mb": max(r["peak_rss_delta_mb"] for r in ok)}
    timed = [b for b in baselines if "seconds" in per.get(b, {})]
    out: dict = {"summary": per}
    apple = per.get(APPLE_RUN, {})
    if not timed or "seconds" not in apple:
        out["ratio"], out["ratio_reason"] = None, "APPLE or every retraining baseline failed (see runs)"
        return out
    cheapest = min(timed, key=lambda b: per[b]["seconds"]["median"])
    a_secs = [r["seconds"] for r in runs[APPLE_RUN] if "seconds" in r]
    c_secs = [r["seconds"] for r in runs[cheapest] if "seconds" in r]
    paired = len(a_secs) == len(c_secs)
    measured = ratio_ci(a_secs, c_secs) if paired else {"ratio": round(statistics.median(a_secs)
                                                                       / statistics.median(c_secs), 4), "ci95": None}
    out.update(cheapest_baseline=cheapest, ratio=measured["ratio"], ratio_ci95=measured["ci95"],
               ratio_by_baseline={b: round(apple["seconds"]["median"] / per[b]["seconds"]["median"], 4)
                                  for b in timed})
    key = f"projected_s_{PROJECT_EPOCHS}"
    projected = [b for b in timed if per[b].get(key)]
    if apple.get(key) and projected:
        cheap30 = min(projected, key=lambda b: per[b][key])
        out[f"ratio_{PROJECT_EPOCHS}_derived"] = round(apple[key] / per[cheap30][key], 4)
        out[f"cheapest_baseline_{PROJECT_EPOCHS}_derived"] = cheap30
    else:
        out[f"ratio_{PROJECT_EPOCHS}_derived"] = None
        out[f"ratio_{PROJECT_EPOCHS}_derived_reason"] = "needs at least 2 epochs per run (an epoch clock)"
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def realistic(cfg: BenchConfig, work: Path, quiet: bool = True) -> dict:
    """The realistic section: mitigation cost and inference latency of each of `cfg.realistic_models`."""
    out: dict = {"mitigation": {}, "inference": {}}
    for model in cfg.realistic_models:
        out["mitigation"][model] = attempt(lambda model=model: realistic_cost(cfg, work, model, quiet))
    for model in cfg.realistic_models:
        out["inference"][model] = attempt(lambda model=model: inference_overhead(
            model, model_size(cfg, model), cfg.latency_repeats, tiny=cfg.realistic_tiny, seed=cfg.seed,
            device=cfg.device, max_seconds=cfg.realistic_latency_seconds, widths=(), small=False))
    return out
