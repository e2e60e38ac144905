"""Zoo benchmark: every model ERM-trained on the synthetic nodules, then APPLE at its default site.

Per model: parameters, seconds per ERM epoch (wall and process CPU: on a shared machine the CPU
time is the one to compare), test Dice per group and gap, seconds per APPLE
epoch, and whether the frozen weights stayed bit-identical. CPU-sized by default (tiny models);
--full uses the default sizes (SAM variants at --sam-size px, since ViT-B at 1024 px takes ~26 s
per image on 2 CPU cores).

    OMP_NUM_THREADS=1 python bench/models_zoo.py --n 160 --size 64 --epochs 6 --apple-epochs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import pandas as pd
import torch

from applefair.apple.config import AppleConfig
from applefair.apple.trainer import train_apple
from applefair.data import GroupSpec, SegmentationDataset, generate, read_manifest
from applefair.engine.io import state_dict_hash
from applefair.metrics.evaluate import predict_scores
from applefair.models import create_segmentor, list_models
from applefair.training.erm import TrainConfig, train_segmentor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bias", default="contrast")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--apple-epochs", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="default sizes instead of --tiny")
    ap.add_argument("--sam-size", type=int, default=256, help="SAM img_size with --full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="CSV to write")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        frame = read_manifest(generate(f"{tmp}/data", n=args.n, size=args.size, bias=args.bias, seed=args.seed))
        groups = GroupSpec("sex").fit(frame)
        split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
        rows = []
        for name in args.models.split(","):
            kw = {"img_size": args.sam_size} if args.full and name in ("sam", "samed") else {}
            torch.manual_seed(args.seed)
            net, spec = create_segmentor(name, tiny=not args.full, **kw)
            t, c = time.time(), time.process_time()
            train_segmentor(net, split["train"], split["val"], groups,
                            TrainConfig(epochs=args.epochs, batch_size=16, seed=args.seed), quiet=True)
            erm_s, erm_cpu = (time.time() - t) / args.epochs, (time.process_time() - c) / args.epochs
            scores = predict_scores(net, split["test"], groups)
            by = scores.groupby("group")["dice"].mean()
            digest = state_dict_hash(net)
            t, c = time.time(), time.process_time()
            patched = train_apple(net, spec.site, split["train"], split["val"], groups,
                                  AppleConfig(epochs=args.apple_epochs, seed=args.seed, width=16), quiet=True).patched
            apple_s = (time.time() - t) / max(1, args.apple_epochs)
            apple_cpu = (time.process_time() - c) / max(1, args.apple_epochs)
            after = predict_scores(patched, split["test"], groups).groupby("group")["dice"].mean()
            rows.append({"model": name, "params": sum(p.numel() for p in net.parameters()), "site": spec.site,
                         "erm_s_per_epoch": round(erm_s, 2),
                         "erm_cpu_s_per_epoch": round(erm_cpu, 2), "dice_all": round(float(scores["dice"].mean()), 4),
                         **{f"dice_{g}": round(float(v), 4) for g, v in by.items()},
                         "gap": round(float(by.max() - by.min()), 4),
                         "apple_s_per_epoch": round(apple_s, 2),
                         "apple_cpu_s_per_epoch": round(apple_cpu, 2),
                         "gap_after": round(float(after.max() - after.min()), 4),
                         "frozen": state_dict_hash(patched.net) == digest})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
