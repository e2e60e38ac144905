"""GPU study: APPLE's cost and effect at deployment scale, one run of under 8 minutes on one H100/H200.

Three parts, each written to the JSON as soon as it ends (a part that fails or runs out of the time
budget is recorded as such, the others still run):

1. `nccl`: the process group initialised with NCCL (gloo without a GPU) for one process from
   environment variables, as torchrun would set them; an all-reduce, a DistributedDataParallel step,
   and a whole APPLE run inside the group. (With one process applefair's own helpers take their
   single-process path; the multi-process path needs two GPUs.)
2. `cost_sam_1024`: SAM ViT-B at 1024 px (`sam_vit_b_1024`): the image encoder's time per image,
   the latent cache's build and a cached APPLE epoch per 1,000 images, and each retraining baseline's
   epoch per 1,000 images where it fits in memory, all at the same epochs and batch size; from those,
   projected times of a full mitigation over 8,000 images and 30 epochs (linear in the images:
   `(time to the end of epoch 1 + 29 later epochs) x 8000 / training images`; a projection, labelled so).
3. `fairness`: a SAM ViT-B (`sam_vit_b_256`) and `unet_large` trained by ERM on the misused-cue
   benchmark (`spurious`, strength 1.5) with a few thousand 256-px images, then APPLE with its defaults,
   then the test Dice gap before and after with bootstrap intervals, through the workflows' own steps
   (`build_model`, `train_deployed`, `fit_method`, `evaluate_change`).

    python bench/gpu_study.py --out bench/results/gpu_study              # on the GPU (about 7 minutes)
    python bench/gpu_study.py --toy --device cpu --out /tmp/gpu-study    # the same code at toy sizes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from applefair.engine.io import write_json, write_text
from applefair.workflows.bench.measure import Measure, attempt, machine
from applefair.workflows.bench.timing import EpochClock

RETRAINING = ("resampling", "groupdro", "febs", "adversarial")
JSON, MD = "gpu_study.json", "gpu_study.md"


@dataclass
class Sizes:
    """Every size of the study; `full()` fits about 7 minutes of one H200, `toy()` a minute of a CPU."""

    toy: bool = False
    budget_s: float = 450.0  # parts not started by then are skipped
    workers: int = 16  # processes generating the synthetic images
    cost_model: str = "sam_vit_b_1024"
    cost_image: int = 256  # side of the stored images (the model resizes them to its 1024-px input)
    cost_train: int = 48
    cost_val: int = 16
    cost_epochs: int = 3
    cost_batch: int = 4
    project_images: int = 8000
    project_epochs: int = 30
    baselines: tuple[str, ...] = RETRAINING
    fair_models: tuple[str, ...] = ("sam_vit_b_256", "unet_large")
    fair_n: int = 2000  # 60% train, 20% val, 20% test
    fair_size: int = 256
    fair_deploy_epochs: int = 6
    fair_apple_epochs: int = 8
    fair_batch: int = 32
    nccl_images: int = 40

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def toy_sizes(cls) -> Sizes:
        return cls(toy=True, budget_s=120.0, workers=1, cost_image=64, cost_train=8, cost_val=4, cost_epochs=2,
                   fair_n=40, fair_size=64, fair_deploy_epochs=1, fair_apple_epochs=2, fair_batch=8,
                   nccl_images=20)


def generate_parallel(out: Path, n: int, size: int, workers: int, seed: int = 0, **kw) -> Path:
    """The synthetic benchmark in `workers` chunks generated side by side, joined into one manifest."""
    from applefair.data.synthetic import generate

    chunks = max(1, min(workers, n // 40))
    sizes = [n // chunks + (1 if k < n % chunks else 0) for k in range(chunks)]
    args = [(out / f"part{k:02d}", sizes[k], size, seed + k) for k in range(chunks)]
    paths = None
    if chunks > 1:  # fresh interpreters (spawn): this process already holds CUDA and threads
        try:
            with ProcessPoolExecutor(chunks, mp_context=multiprocessing.get_context("spawn")) as pool:
                paths = list(pool.map(_generate, [(*a, kw) for a in args]))
        except Exception as exc:  # noqa: BLE001 - e.g. not started as a script: generate here instead
            print(f"parallel generation failed ({type(exc).__name__}: {exc}); generating in this process")
    if paths is None:
        paths = [generate(a[0], n=a[1], size=a[2], seed=a[3], **kw) for a in args]
    frames = []
    for k, p in enumerate(paths):
        f = pd.read_csv(p, dtype=str, keep_default_na=False)
        f["id"] = f"p{k:02d}_" + f["id"]
        for col in ("image", "mask"):
            f[col] = f"part{k:02d}/" + f[col]
        frames.append(f)
    manifest = out / "manifest.csv"
    pd.concat(frames).to_csv(manifest, index=False)
    return manifest


def _generate(a: tuple) -> Path:
    from applefair.data.synthetic import generate

    folder, n, size, seed, kw = a
    return generate(folder, n=n, size=size, seed=seed, **kw)


def _splits(manifest: Path):
    from applefair.workflows.bench.workloads import load_splits

    return load_splits(manifest)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- 1. NCCL, one process


def nccl_part(sz: Sizes, work: Path, dev: torch.device, deadline: float) -> dict:
    """The process group for one process (NCCL on a GPU), a collective, a DDP step and an APPLE run."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from applefair.apple.config import AppleConfig
    from applefair.apple.trainer import train_apple
    from applefair.data.synthetic import generate
    from applefair.engine import distributed

    backend = "nccl" if dev.type == "cuda" else "gloo"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out: dict = {"backend_asked": backend}
    try:
        dist.init_process_group(backend, init_method="env://", world_size=1, rank=0)
        out["backend"] = dist.get_backend()
        t = torch.full((4,), 2.0, device=dev)
        dist.all_reduce(t)
        out["all_reduce_ok"] = bool(torch.allclose(t, torch.full_like(t, 2.0)))
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)).to(dev)
        ddp = DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(net) if dev.type == "cuda"
                                      else net, device_ids=[dev.index or 0] if dev.type == "cuda" else None)
        ddp(torch.rand(2, 1, 8, 8, device=dev)).mean().backward()
        out["ddp_step_ok"] = True
        split, groups = _splits(generate(work / "nccl-data", n=sz.nccl_images, size=64, seed=1))
        from applefair.workflows.train import build_model

        net, spec = build_model("unet", tiny=True, seed=0)
        net.to(dev).eval()
        with Measure() as m:
            res = train_apple(net, spec.site, split["train"], split["val"], groups,
                              AppleConfig(epochs=2, batch_size=8, restarts=1), quiet=True)
        out.update(apple_completed=len(res.history) == 3, apple_seconds=round(m.seconds, 2),
                   applefair_world_size=distributed.world_size(), process_group_initialised=dist.is_initialized())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


# ----------------------------------------------------------------------------- 2. cost at 1024 px


def _timed_fit(method: str, options: dict | None, net, spec, split, groups, budget) -> dict:
    from applefair.baselines import get_method

    try:
        with Measure() as m, EpochClock(budget.epochs) as clock:
            res = get_method(method).fit(net, spec, split["train"], split["val"], groups, budget, options, True)
    except torch.cuda.OutOfMemoryError as exc:  # "where they fit"
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(exc)[:160]}"}
    return {**m.as_dict(), **clock.split(), "trainable_params": res.trainable_params}


def _per_1000(run: dict, n_train: int, sz: Sizes) -> dict:
    """Seconds per 1,000 training images of a later epoch, and the projected full run (see module doc)."""
    if not run.get("epoch_s"):
        return {}
    epoch = sorted(run["epoch_s"])[len(run["epoch_s"]) // 2]
    scale = sz.project_images / n_train
    return {"epoch_s_per_1000": round(epoch * 1000 / n_train, 3),
            "projected_full_s": round((run["first_s"] + (sz.project_epochs - 1) * epoch) * scale, 1)}


def cost_part(sz: Sizes, work: Path, dev: torch.device, deadline: float) -> dict:
    from applefair.apple.cache import LatentCache
    from applefair.baselines.base import Budget
    from applefair.workflows.train import build_model

    n = sz.cost_train + 2 * sz.cost_val
    frac = (sz.cost_train / n, sz.cost_val / n, sz.cost_val / n)
    from applefair.data.synthetic import generate

    split, groups = _splits(generate(work / "cost-data", n=n, size=sz.cost_image, seed=2, split_fractions=frac))
    for ds in split.values():
        for i in range(len(ds)):
            ds[i]
    net, spec = build_model(sz.cost_model, tiny=sz.toy, seed=0)  # random weights: timing does not depend on them
    net.to(dev).eval()
    out: dict = {"model": sz.cost_model, "tiny": sz.toy, "args": spec.args,
                 "images": {k: len(v) for k, v in split.items()}, "epochs": sz.cost_epochs,
                 "batch_size": sz.cost_batch, "params": sum(p.numel() for p in net.parameters())}
    # the image encoder alone, one batch at a time
    enc = net.sam.image_encoder if hasattr(net, "sam") else None
    if enc is not None:
        side = enc.img_size
        x = torch.rand(sz.cost_batch, 3, side, side, device=dev)
        times = []
        with torch.no_grad():
            for _ in range(4):
                _sync(dev)
                t = time.perf_counter()
                enc(x)
                _sync(dev)
                times.append(time.perf_counter() - t)
        out["encoder_s_per_image"] = round(sorted(times[1:])[1] / sz.cost_batch, 5)  # median after a warm-up
    builds = {}
    for dtype in ("fp32", "auto"):
        with Measure() as m:
            cache = LatentCache.build(net, [spec.site], split["train"], batch_size=sz.cost_batch, dtype=dtype)
        builds[cache.dtype] = {"seconds": round(m.seconds, 3), "s_per_1000": round(m.seconds * 1000 / len(cache), 2),
                               "mb": round(cache.nbytes() / 2**20, 1)}
        del cache
    out["cache_build"] = builds
    budget = Budget(epochs=sz.cost_epochs, batch_size=sz.cost_batch, seed=0)
    # one game each (`restarts: 1`): the epoch clocks and the projection are per game
    fp32 = {"augment": False, "precision": "fp32", "cache": "memory", "cache_dtype": "fp32", "restarts": 1}
    variants = {"apple_fp32": ("apple", fp32), "apple_default": ("apple", {"augment": False, "restarts": 1}),
                **{b: (b, None) for b in sz.baselines}}
    runs = {}
    for name, (method, options) in variants.items():
        if time.perf_counter() > deadline:
            runs[name] = {"skipped": "time budget"}
            continue
        run = attempt(lambda method=method, options=options: _timed_fit(method, options, net, spec, split, groups,
                                                                         budget))
        runs[name] = {**run, **_per_1000(run, sz.cost_train, sz)}
    out["runs"] = runs
    fitted = [b for b in sz.baselines if "projected_full_s" in runs.get(b, {})]
    if fitted and "projected_full_s" in runs.get("apple_fp32", {}):
        cheapest = min(fitted, key=lambda b: runs[b]["projected_full_s"])
        apple = runs["apple_fp32"]["projected_full_s"]
        out["projected_ratio_fp32"] = round(apple / runs[cheapest]["projected_full_s"], 4)
        out["cheapest_baseline"] = cheapest
    return out


# ----------------------------------------------------------------------------- 3. fairness at scale


def _eval_summary(ev) -> dict:
    def frame(f) -> dict:
        ci = f.ci
        return {"dice": round(f.dice, 4), "dice_ci95": ci.get("overall", {}).get("dice"),
                "dice_gap": round(f.gap(), 4), "dice_gap_ci95": ci.get("fairness", {}).get("dice_delta"),
                "groups": {g: round(f.group(g), 4) for g in f.summary.get("groups", {})}}
    change = ev.paired["fairness"]["dice_delta"] if ev.paired else None
    return {"before": frame(ev.before_frame), "after": frame(ev.frame),
            "gap_change": None if change is None else {"diff": round(change["diff"], 4), "ci95": change["ci"]},
            "dice_change": None if ev.paired is None else {"diff": round(ev.paired["overall"]["dice"]["diff"], 4),
                                                           "ci95": ev.paired["overall"]["dice"]["ci"]},
            "leakage": {s: {k: v for k, v in d.items() if k in ("auc_before", "auc_after")}
                        for s, d in (ev.leakage or {}).items()}}


def fairness_part(sz: Sizes, work: Path, dev: torch.device, deadline: float) -> dict:
    from applefair.apple.config import AppleConfig
    from applefair.baselines import get_method
    from applefair.training.erm import TrainConfig
    from applefair.workflows.evaluate import evaluate_change
    from applefair.workflows.mitigate import fit_method
    from applefair.workflows.train import build_model, train_deployed

    with Measure() as m:
        manifest = generate_parallel(work / "fair-data", sz.fair_n, sz.fair_size, sz.workers, seed=3,
                                     bias="spurious", strength=1.5)
    split, groups = _splits(manifest)
    out: dict = {"benchmark": "nodules, spurious, strength 1.5", "image_size": sz.fair_size,
                 "images": {k: len(v) for k, v in split.items()}, "generate_s": round(m.seconds, 1), "models": {}}
    for model in sz.fair_models:
        if time.perf_counter() > deadline:
            out["models"][model] = {"skipped": "time budget"}
            continue

        def one(model: str = model) -> dict:
            net, spec = build_model(model, tiny=sz.toy, seed=0)
            cfg = TrainConfig(epochs=sz.fair_deploy_epochs, batch_size=sz.fair_batch, seed=0, device=str(dev))
            net.to(dev)
            trained = train_deployed(net, spec, split, groups, cfg)
            net.eval()
            # one game: the study's time budget was sized for it (the default plays three, `restarts`)
            acfg = AppleConfig(epochs=sz.fair_apple_epochs, batch_size=sz.fair_batch, seed=0, restarts=1)
            fit = fit_method(get_method("apple"), net, spec, split, groups, acfg)
            with Measure() as ev_m:
                ev = evaluate_change(fit.model, split["test"], groups, sites=fit.latent_sites, bootstrap=1000, seed=0)
            return {"args": spec.args, "erm_s": round(trained.seconds, 1), "erm_best_val_dice": trained.best_val_dice,
                    "apple_s": round(fit.seconds, 1), "selected_epoch": fit.selected_epoch,
                    "perturber": fit.extra.get("perturber"), "evaluate_s": round(ev_m.seconds, 1), **_eval_summary(ev)}

        out["models"][model] = attempt(one)
    return out


# ----------------------------------------------------------------------------- the run


PARTS = {"nccl": nccl_part, "cost_sam_1024": cost_part, "fairness": fairness_part}


def study(sz: Sizes, out: Path, device: str, work: Path, parts: list[str] | None = None) -> dict:
    dev = torch.device(device)
    start = time.perf_counter()
    deadline = start + sz.budget_s
    result: dict = {"machine": machine(), "device": str(dev), "sizes": asdict(sz),
                    "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
                    "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "parts": {}}
    for name, fn in PARTS.items():
        if parts is not None and name not in parts:
            continue
        if time.perf_counter() > deadline:
            result["parts"][name] = {"skipped": "time budget"}
            continue
        t = time.perf_counter()
        result["parts"][name] = {**attempt(lambda fn=fn: fn(sz, work, dev, deadline)),
                                 "part_s": None}
        result["parts"][name]["part_s"] = round(time.perf_counter() - t, 1)
        result["seconds"] = round(time.perf_counter() - start, 1)
        write(out, result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["machine_after"] = machine()
    write(out, result)
    return result


def write(out: Path, result: dict) -> None:
    write_json(out / JSON, result)
    write_text(out / MD, markdown(result))


def markdown(r: dict) -> str:
    m = r.get("machine", {})
    lines = [f"# GPU study ({'toy sizes' if r['sizes'].get('toy') else 'full sizes'})", "",
             f"Command: `{r.get('command')}`  ", f"Device: {r.get('device')} ({m.get('gpu') or 'no GPU'}), torch "
             f"{m.get('torch')}, {m.get('cores')} cores; date {m.get('date')}; total {r.get('seconds')} s", ""]
    for name, part in r.get("parts", {}).items():
        lines += [f"## {name} ({part.get('part_s')} s)", "", "```json", json.dumps(
            {k: v for k, v in part.items() if k != "part_s"}, indent=1, default=str)[:6000], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_study"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--toy", action="store_true", help="tiny models and a few images (a CPU test)")
    ap.add_argument("--budget-s", type=float, default=None, help="skip parts not started by then")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    sz = Sizes.toy_sizes() if args.toy else Sizes.full()
    if args.budget_s is not None:
        sz.budget_s = args.budget_s
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-study-") as tmp:
        res = study(sz, args.out, args.device, args.work or Path(tmp), wanted)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, (dict, list))}
                      for k, v in res["parts"].items()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
