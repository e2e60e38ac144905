"""The workloads `applefair bench` times: mitigation (APPLE vs retraining), APPLE epochs vs data-set and
image size, and evaluation throughput (inference overhead: `latency`; SAM ViT-B scale: `realistic`)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import generate
from applefair.engine.io import write_csv
from applefair.engine.runfolder import MANIFEST
from applefair.workflows.bench.config import BenchConfig
from applefair.workflows.bench.latency import inference_overhead  # noqa: F401 - re-exported (bench scripts)
from applefair.workflows.bench.measure import Measure, attempt

# ----------------------------------------------------------------------------- data


def repeated_manifest(source: Path, n: int, name: str, split: str = "train") -> Path:
    """A manifest of `n` rows cycling over the images of `source` (unique ids, shared files):
    data sets of any size without rendering every image, for timing only."""
    base = pd.read_csv(source, dtype=str, keep_default_na=False)
    rows = base.iloc[[i % len(base) for i in range(n)]].copy()
    rows["id"] = [f"r{i:06d}" for i in range(n)]
    rows["split"] = split
    path = source.parent / name
    write_csv(path, rows[["id", "image", "mask", "split", "sex"]])
    return path


def load_splits(manifest: Path, cache: bool = True) -> tuple[dict[str, SegmentationDataset], GroupSpec]:
    frame = read_manifest(manifest)
    groups = GroupSpec("sex").fit(frame)
    return {s: SegmentationDataset(frame, groups, s, cache=cache) for s in ("train", "val", "test")}, groups


# ----------------------------------------------------------------------------- 1. mitigation cost


def mitigation_cost(cfg: BenchConfig, work: Path, model: str = "unet", tiny: bool = False, args: dict | None = None,
                    quiet: bool = True) -> dict:
    """Wall time, CPU time and peak memory of APPLE (cached, uncached) and each retraining baseline,
    all from the same deployed `model` with the same data, epochs and batch size.

    The U-Net is first trained by ERM (`deploy_epochs`); other models keep their random weights
    (timing does not depend on them, and training a SAM-like model here would dominate the bench).
    """
    from applefair.baselines import get_method
    from applefair.baselines.base import Budget
    from applefair.models.registry import create_segmentor
    from applefair.training.erm import TrainConfig, train_segmentor

    folder = work / "cost"
    manifest = folder / MANIFEST if (folder / MANIFEST).is_file() else \
        generate(folder, n=cfg.n, size=cfg.size, seed=cfg.seed)
    split, groups = load_splits(manifest)
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    net, spec = create_segmentor(model, tiny=tiny, **(args or {}))
    if model == "unet":
        train_segmentor(net, split["train"], split["val"], groups,
                        TrainConfig(epochs=cfg.deploy_epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                                    device=str(dev)), quiet=quiet)
    net.to(dev)  # every method trains on the device of the network it is given
    budget = Budget(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    runs: dict[str, dict] = {}

    def fit(method: str, options: dict | None = None) -> dict:
        with Measure() as m:
            res = get_method(method).fit(net, spec, split["train"], split["val"], groups, budget, options, quiet)
        return {**m.as_dict(), "trainable_params": res.trainable_params, "selected_epoch": res.selected_epoch}

    for method in cfg.methods:
        runs[method] = attempt(lambda method=method: fit(method))
    # The retraining baselines run in fp32, so the ratio compares APPLE in fp32 too; on a GPU its
    # default (bf16 autocast) is timed as well, beside the ratio.
    # and one game (`restarts: 1`): the epoch clocks and projections are per game (docs/performance.md)
    same = {"augment": False, "precision": "fp32", "restarts": 1}
    runs["apple_cached"] = attempt(lambda: fit("apple", {**same, "cache": "memory"}))
    runs["apple_uncached"] = attempt(lambda: fit("apple", {**same, "cache": "off"}))
    if dev.type == "cuda":
        runs["apple_cached_bf16"] = attempt(lambda: fit("apple", {**same, "cache": "memory", "precision": "auto"}))
    timed = {k: v for k, v in runs.items() if k in cfg.methods and "seconds" in v}
    cheapest = min(timed, key=lambda k: timed[k]["seconds"]) if timed else None
    out = {"model": model, "tiny": tiny, "args": spec.args, "deployed_params": sum(p.numel() for p in net.parameters()),
           "images": {k: len(v) for k, v in split.items()}, "size": cfg.size, "epochs": cfg.epochs,
           "batch_size": cfg.batch_size, "device": str(dev), "runs": runs, "cheapest_baseline": cheapest}
    for key, run in (("ratio", "apple_cached"), ("ratio_uncached", "apple_uncached")):
        if cheapest is None:
            out[key], out[f"{key}_reason"] = None, "no retraining baseline ran (see runs)"
        elif "seconds" not in runs[run]:
            out[key], out[f"{key}_reason"] = None, runs[run].get("error", "did not run")
        else:
            out[key] = round(runs[run]["seconds"] / timed[cheapest]["seconds"], 4)
            out[f"{key}_cpu"] = round(runs[run]["cpu_seconds"] / timed[cheapest]["cpu_seconds"], 4)
    return out


# ----------------------------------------------------------------------------- 2. inference overhead
# (applefair.workflows.bench.latency)


# ----------------------------------------------------------------------------- 3. scaling


def apple_epoch_cost(train: SegmentationDataset, val: SegmentationDataset, groups: GroupSpec, cache: str,
                      work: Path, seed: int, epochs: int = 2, tiny: bool = False, device: str = "cpu") -> dict:
    """Seconds per APPLE epoch on `train`: the time between the trainer's last two epoch callbacks
    (one game epoch after the discriminator warm-up, plus its validation on the small fixed `val`);
    cache build, epoch-0 validation and the warm-up epoch are reported apart (`until_first_epoch_s`)."""
    from applefair.apple.config import AppleConfig
    from applefair.apple.trainer import train_apple
    from applefair.models.registry import create_segmentor

    torch.manual_seed(seed)
    net, spec = create_segmentor("unet", tiny=tiny)
    net.to(device)  # APPLE trains on the device of the deployed network
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"apple-{cache}-"))
    # one game: the per-epoch clocks and the 30-epoch projection are per game; the default's `restarts: 3` costs
    # the cache build once plus three games (docs/performance.md derives it from these parts)
    cfg = AppleConfig(epochs=epochs, seed=seed, cache=cache, augment=False, selection="last", restarts=1)
    stamps: list[float] = []
    with Measure() as m:
        train_apple(net, spec.site, train, val, groups, cfg, quiet=True, run_dir=run_dir,
                    on_epoch=lambda _row: stamps.append(time.perf_counter()))
    out = {"n": len(train), "cache": cache, "epochs": epochs, "device": str(device), "total_s": round(m.seconds, 3),
           "total_cpu_s": round(m.cpu_seconds, 3),
           "peak_rss_mb": round(m.peak_mb, 1), "peak_rss_delta_mb": round(m.delta_mb, 1),
           "cuda_peak_mb": None if m.cuda_peak_mb is None else round(m.cuda_peak_mb, 1)}
    if len(stamps) >= 2:
        out["s_per_epoch"] = round((stamps[-1] - stamps[-2]), 3)
        out["until_first_epoch_s"] = round(stamps[0] - m.start_time, 3)  # cache build, warm-up epoch
    else:
        out["s_per_epoch"] = None
        out["s_per_epoch_reason"] = "the trainer ran fewer than 2 epochs"
    return out


def scaling(cfg: BenchConfig, work: Path) -> dict:
    """APPLE seconds/epoch and peak memory vs data-set size (memory vs disk cache) and image size."""
    out: dict = {"dataset_size": [], "image_size": []}
    src = generate(work / "scale-src", n=64, size=64, seed=cfg.seed)
    val_split, groups = load_splits(src, cache=False)
    val = val_split["val"]
    for n in cfg.dataset_sizes if "dataset_size" in cfg.sections else ():
        train = load_splits(repeated_manifest(src, n, f"train_{n}.csv"), cache=False)[0]["train"]
        for cache in cfg.caches:
            row = attempt(lambda train=train, cache=cache: apple_epoch_cost(
                train, val, groups, cache, work, cfg.seed, tiny=cfg.tiny, device=cfg.device))
            out["dataset_size"].append({"n": n, "image_size": 64, "cache": cache, **row})
    for size in cfg.image_sizes if "image_size" in cfg.sections else ():
        src_s = generate(work / f"scale-src-{size}", n=32, size=size, seed=cfg.seed)
        split, groups_s = load_splits(src_s, cache=False)
        train = load_splits(repeated_manifest(src_s, cfg.scaling_n, "train_sized.csv"), cache=False)[0]["train"]
        row = attempt(lambda train=train, split=split, groups_s=groups_s: apple_epoch_cost(
            train, split["val"], groups_s, "memory", work, cfg.seed, tiny=cfg.tiny, device=cfg.device))
        out["image_size"].append({"n": cfg.scaling_n, "image_size": size, "cache": "memory", **row})
    return out


# ----------------------------------------------------------------------------- 4. evaluation throughput


def evaluation_throughput(cfg: BenchConfig, work: Path) -> dict:
    """Seconds per 1,000 images of `predict_scores` (default U-Net, 64 px): Dice+IoU vs +HD95."""
    from applefair.metrics.evaluate import predict_scores
    from applefair.models.registry import create_segmentor

    src = generate(work / "eval-src", n=64, size=64, seed=cfg.seed)
    data, groups = load_splits(repeated_manifest(src, cfg.eval_n, "eval.csv", split="test"))
    ds = data["test"]
    for i in range(len(ds)):  # decode once, so that only inference + metrics are timed
        ds[i]
    torch.manual_seed(cfg.seed)
    net, _ = create_segmentor("unet", tiny=cfg.tiny)
    net.to(cfg.device)
    out: dict = {"n": len(ds), "image_size": 64, "model": "unet (tiny)" if cfg.tiny else "unet (default)",
                 "device": cfg.device}
    for label, metrics in (("dice_iou", ("dice", "iou")), ("dice_iou_hd95", ("dice", "iou", "hd95"))):
        with Measure() as m:
            predict_scores(net, ds, groups, metrics=metrics, device=cfg.device)
        out[f"s_per_1000_{label}"] = round(m.seconds * 1000 / len(ds), 3)
    return out
