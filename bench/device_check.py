"""A short check of the CUDA paths, for a machine with a GPU (CI has none; see docs/performance.md).

Runs every trainer once on the GPU with tiny models and data: ERM training, APPLE (latent cache
in memory, on disk, and off; with mixed precision where the config asks for it), every baseline,
evaluation of a patched model, and export. For each it checks that the work ran on the GPU, that
the deployed weights did not change (hash before/after), that the numbers are finite, and how far
the GPU result is from the CPU result of the same seed (not bit-identical: cuDNN kernels differ).

    python bench/device_check.py --out runs/device-check   # prints one JSON line per check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from applefair.apple import AppleConfig, train_apple
from applefair.baselines import Budget, get_method, list_methods
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import generate
from applefair.engine.device import module_device
from applefair.engine.io import state_dict_hash
from applefair.metrics.evaluate import predict_scores
from applefair.models.registry import create_segmentor
from applefair.training.erm import TrainConfig, train_segmentor

RESULTS: list[dict] = []


def check(name: str):
    """Run a check, record its outcome (ok, seconds, details or the error) and go on."""

    def wrap(fn):
        t0 = time.perf_counter()
        row = {"check": name}
        try:
            row.update(fn() or {})
            row["ok"] = row.get("ok", True)
        except Exception as exc:  # noqa: BLE001 - a device check reports every failure, then goes on
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}", where=traceback.format_exc(limit=4))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        RESULTS.append(row)
        print(json.dumps(row, default=str), flush=True)
        return fn

    return wrap


def deployed(name: str, split: dict, groups: GroupSpec, device: str) -> tuple[torch.nn.Module, object]:
    net, spec = create_segmentor(name, tiny=True, seed=0)
    train_segmentor(net, split["train"], split["val"], groups, TrainConfig(epochs=8, seed=0, device=device), quiet=True)
    return net.eval(), spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/device-check"))
    ap.add_argument("--device", default="cuda", help="cuda (the check); cpu only rehearses the script")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    frame = read_manifest(generate(args.out / "data", n=160, size=64, bias="gain", minority_share=0.3, seed=0))
    groups = GroupSpec("sex").fit(frame)
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
    cuda = args.device
    kind = torch.device(cuda).type
    nets = {}

    for model in ("unet", "sam"):
        @check(f"train {model} on {cuda}")
        def _train(model=model):
            net, spec = deployed(model, split, groups, cuda)
            nets[model] = (net, spec)
            dice = float(predict_scores(net, split["test"], groups)["dice"].mean())
            return {"device": str(module_device(net)), "ok": module_device(net).type == kind and math.isfinite(dice),
                    "test_dice": round(dice, 4)}

    for model in ("unet", "sam"):
        for cache in ("auto", "disk", "off"):
            @check(f"apple {model} cache={cache}")
            def _apple(model=model, cache=cache):
                net, spec = nets[model]
                before = state_dict_hash(net)
                cfg = AppleConfig(epochs=2, seed=0, cache=cache, perturber="conv", width=8, batch_size=8)
                run_dir = args.out / f"apple-{model}-{cache}"
                res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True,
                                  head=spec.head, run_dir=run_dir)
                patched, history = res.patched, res.history
                on = {str(module_device(patched.perturbers)), str(module_device(net))}
                patched.remove()  # the next check starts from the bare deployed model
                last = history[-1]
                finite = all(math.isfinite(float(v)) for k, v in last.items() if isinstance(v, float))
                return {"devices": sorted(on), "cache": res.cache, "frozen": state_dict_hash(net) == before,
                        "val_dice": round(last["val_dice"], 4), "probe_auc": round(last["probe_auc"], 3),
                        "ok": all(d.startswith(kind) for d in on) and finite and state_dict_hash(net) == before}

    @check(f"apple unet: {cuda} vs cpu, same seed")
    def _agree():
        net, spec = nets["unet"]
        out = {}
        for dev in (cuda, "cpu"):
            net.to(dev)
            cfg = AppleConfig(epochs=2, seed=0, perturber="conv", width=8, batch_size=8)
            res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True, head=spec.head)
            res.patched.remove()
            out[dev] = res.history[-1]["val_dice"]
        net.to(cuda)
        diff = abs(out[cuda] - out["cpu"])
        return {"val_dice_device": out[cuda], "val_dice_cpu": out["cpu"], "abs_diff": diff, "ok": diff < 0.02}

    for method in list_methods():
        @check(f"baseline {method} on {cuda}")
        def _baseline(method=method):
            net, spec = nets["unet"]
            before = state_dict_hash(net)
            fit = get_method(method).fit(net, spec, split["train"], split["val"], groups,
                                         Budget(epochs=1, batch_size=8, seed=0), quiet=True)
            dev = module_device(fit.model)
            dice = float(predict_scores(fit.model, split["test"], groups)["dice"].mean())
            same = state_dict_hash(net) == before
            return {"device": str(dev), "test_dice": round(dice, 4), "deployed_unchanged": same,
                    "ok": dev.type == kind and math.isfinite(dice) and same}

    (args.out / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
