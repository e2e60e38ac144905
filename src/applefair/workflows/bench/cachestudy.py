"""The latent cache at scale: peak memory against the data set's size, and what a half-precision cache
does to APPLE's result.

`cache_memory`: synthetic latents of a realistic shape (default 256x16x16, sam_vit_b_256's image
embedding) go through the same `LatentCache.build` / `lookup` as a trainer's: a one-layer encoder turns
each 16x16 input into the latent, so nothing but the store grows with the data set. Per size and
store (in memory, on disk) and dtype: the peak anonymous memory (RssAnon, `measure.Measure`) of the
build plus one epoch of shuffled lookups, and the store's bytes.

`cache_dtype`: one deployed U-Net (ERM) on the misused-cue benchmark (`spurious`, strength 1.5); APPLE
fitted per seed with the cache stored in fp32, fp16 and bf16 (everything else equal, computation in
fp32), and once more in fp32 (`fp32_repeat`: a second identical run, the control that tells a dtype
effect from run-to-run nondeterminism); the selected patches' test Dice and Dice gap compared with the
first fp32 run's, with paired bootstrap intervals (`workflows.evaluate.evaluate_change`).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from applefair.workflows.bench.config import BenchConfig
from applefair.workflows.bench.measure import Measure, attempt


class SyntheticLatents(torch.utils.data.Dataset):
    """`n` inputs of 1 x H x W, each drawn from its own index (nothing held in memory)."""

    def __init__(self, n: int, hw: tuple[int, int], seed: int = 0):
        self.n, self.hw, self.seed = n, hw, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return {"image": torch.rand(1, *self.hw, generator=g), "mask": torch.zeros(1, *self.hw), "group": i % 2,
                "index": i}

    def fingerprint(self) -> str:
        return f"synthetic-latents:{self.n}:{self.hw}:{self.seed}"


class LatentMaker(nn.Module):
    """encoder (1x1 conv to C channels: the latent) -> decoder (1x1 conv back); the site is `encoder`."""

    def __init__(self, channels: int):
        super().__init__()
        self.encoder = nn.Conv2d(1, channels, 1)
        self.decoder = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def cache_memory(cfg: BenchConfig, work: Path, stores: tuple[str, ...] = ("memory", "disk"),
                 dtypes: tuple[str, ...] = ("fp32", "fp16"), batch_size: int = 16) -> dict:
    """Peak RssAnon of building the cache and one epoch of lookups, per data-set size, store and dtype."""
    from applefair.apple.cache import LatentCache

    c, h, w = cfg.cache_latent
    torch.manual_seed(cfg.seed)
    net = LatentMaker(c).eval()
    rows = []
    for n in cfg.cache_sizes:
        data = SyntheticLatents(n, (h, w), cfg.seed)
        for store in stores:
            for dtype in dtypes:
                folder = Path(tempfile.mkdtemp(dir=work, prefix="cache-mem-")) if store == "disk" else None

                def run(data=data, folder=folder, dtype=dtype, n=n) -> dict:
                    with Measure() as m:
                        cache = LatentCache.build(net, ["encoder"], data, batch_size=32, folder=folder, dtype=dtype)
                        built = m.seconds_so_far()
                        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
                        for idx in order.split(batch_size):
                            cache.lookup("encoder", idx)
                    return {"build_s": round(built, 3), "epoch_s": round(m.seconds - built, 3),
                            "store_mb": round(cache.nbytes() / 2**20, 1), "peak_rss_mb": round(m.peak_mb, 1),
                            "peak_rss_delta_mb": round(m.delta_mb, 1)}

                rows.append({"n": n, "store": store, "dtype": dtype, "latent": [c, h, w], **attempt(run)})
    return {"latent": [c, h, w], "batch_size": batch_size, "rows": rows}


@contextlib.contextmanager
def cache_stored_as(dtype: str) -> Iterator[list[str]]:
    """Every latent cache built inside stores in `dtype`; yields the dtypes the caches were built with.

    `AppleConfig.cache_dtype` is read by `apple.cache.build_caches`; `train_apple` builds its caches
    through `LatentCache.build` with the device's default (auto), so the study sets the dtype there."""
    from applefair.apple.cache import LatentCache

    original = LatentCache.__dict__["build"]
    built: list[str] = []

    def build(cls, *args, **kwargs):
        kwargs["dtype"] = dtype
        cache = original.__func__(cls, *args, **kwargs)
        built.append(cache.dtype)
        return cache

    LatentCache.build = classmethod(build)
    try:
        yield built
    finally:
        LatentCache.build = original


def cache_dtype(cfg: BenchConfig, work: Path, quiet: bool = True, dtypes: tuple[str, ...] = ("fp16", "bf16")) -> dict:
    """APPLE's selected patch with each half-precision cache against the fp32 cache, per seed (test split)."""
    from applefair.apple.config import AppleConfig
    from applefair.baselines import get_method
    from applefair.data.synthetic import generate
    from applefair.training.erm import TrainConfig
    from applefair.workflows.bench.workloads import load_splits
    from applefair.workflows.evaluate import evaluate_change
    from applefair.workflows.mitigate import fit_method
    from applefair.workflows.train import build_model, train_deployed

    manifest = generate(work / "dtype-data", n=cfg.dtype_n, size=cfg.size, bias="spurious", strength=1.5,
                        seed=cfg.seed)
    split, groups = load_splits(manifest)
    net, spec = build_model("unet", tiny=cfg.tiny, seed=cfg.seed)
    train_deployed(net, spec, split, groups, TrainConfig(epochs=cfg.deploy_epochs, batch_size=cfg.batch_size,
                                                          seed=cfg.seed, device=cfg.device), quiet=quiet)
    net.to(cfg.device).eval()
    deployed = evaluate_change(net, split["test"], groups, leakage=False, bootstrap=1000, seed=cfg.seed)
    out: dict = {"model": "unet (tiny)" if cfg.tiny else "unet", "benchmark": "nodules, spurious, strength 1.5",
                 "images": {k: len(v) for k, v in split.items()}, "image_size": cfg.size, "epochs": cfg.dtype_epochs,
                 "deployed": _frame(deployed.frame), "seeds": {}}
    arms = (*dtypes, "fp32_repeat")  # the repeat: how far a second, identical fp32 run lands (determinism)
    for seed in cfg.dtype_seeds:
        fits = {}
        for arm in ("fp32", *arms):
            dtype = arm.removesuffix("_repeat")
            acfg = AppleConfig(epochs=cfg.dtype_epochs, batch_size=cfg.batch_size, seed=seed, cache="memory",
                               cache_dtype=dtype, precision="fp32", augment=False, restarts=1)
            with cache_stored_as(dtype) as built:
                fits[arm] = fit_method(get_method("apple"), net, spec, split, groups, acfg, quiet=quiet)
            fits[arm].extra["cache_dtypes_built"] = list(built)
        row = {"fp32": {"selected_epoch": fits["fp32"].selected_epoch,
                        "cache_dtypes_built": fits["fp32"].extra["cache_dtypes_built"]}}
        for arm in arms:  # paired: the fp32-cache patch as "before", the other one as "after"
            ev = evaluate_change(fits[arm].model, split["test"], groups, deployed=fits["fp32"].model,
                                 leakage=False, bootstrap=1000, seed=seed)
            row["fp32"].update(_frame(ev.before_frame))
            row[arm] = {**_frame(ev.frame), "selected_epoch": fits[arm].selected_epoch,
                        "cache_dtypes_built": fits[arm].extra["cache_dtypes_built"], "vs_fp32": _change(ev.paired)}
        out["seeds"][str(seed)] = row
    for arm in arms:
        diffs = [r[arm]["vs_fp32"] for r in out["seeds"].values()]
        out[f"{arm}_minus_fp32"] = {k: {"per_seed": [d[k]["diff"] for d in diffs],
                                        "max_abs": max(abs(d[k]["diff"]) for d in diffs)}
                                    for k in ("dice", "dice_gap")}
    return out


def _frame(frame) -> dict:
    return {"dice": round(frame.dice, 5), "dice_gap": round(frame.gap(), 5),
            "groups": {g: round(frame.group(g), 5) for g in frame.summary.get("groups", {})}}


def _change(paired: dict) -> dict:
    """After - before of overall Dice and of the Dice gap, with the paired bootstrap 95% interval."""
    def pick(entry: dict) -> dict:
        return {"diff": round(entry["diff"], 5), "ci95": [round(v, 5) for v in entry["ci"]]}
    return {"dice": pick(paired["overall"]["dice"]), "dice_gap": pick(paired["fairness"]["dice_delta"])}
