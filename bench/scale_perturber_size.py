"""What a smaller perturber costs in fairness: APPLE with the default perturber vs smaller ones.

The inference targets (<= 10% latency, <= 5% parameters on the default U-Net) need a perturber
far smaller than the paper's U-shaped one; this script measures what that does to the gap, the
ES-Dice and the fresh probe's AUC on the synthetic benchmark (one data set, one seed per run).

    python bench/scale_perturber_size.py --bias artifact --out bench/results/scale_perturber_size.csv
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from applefair.apple.trainer import validate  # noqa: E402
from applefair.baselines import get_method  # noqa: E402
from applefair.baselines.base import Budget  # noqa: E402
from applefair.data.groups import GroupSpec  # noqa: E402
from applefair.data.manifest import SegmentationDataset, read_manifest  # noqa: E402
from applefair.data.synthetic import generate  # noqa: E402
from applefair.engine.io import write_csv  # noqa: E402
from applefair.metrics.evaluate import score  # noqa: E402
from applefair.models.registry import create_segmentor  # noqa: E402
from applefair.training.erm import TrainConfig, train_segmentor  # noqa: E402

VARIANTS = {  # label -> APPLE options
    "unet-w32": {"perturber": "unet", "width": 32},  # the paper's shape (the default on large models)
    "unet-w8": {"perturber": "unet", "width": 8},
    "conv-w8": {"perturber": "conv", "width": 8},
    "conv-w4": {"perturber": "conv", "width": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_perturber_size.csv"))
    ap.add_argument("--bias", default="artifact")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--quick", action="store_true", help="240 images at 64 px, 8 ERM and 6 APPLE epochs")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--erm-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12, help="APPLE epochs")
    args = ap.parse_args()
    n, size, erm_epochs, epochs = (240, 64, 8, 6) if args.quick else (args.n, args.size, args.erm_epochs, args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            frame = read_manifest(generate(Path(work) / f"d{seed}", n=n, size=size, bias=args.bias, seed=seed))
            groups = GroupSpec("sex").fit(frame)
            split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
            torch.manual_seed(seed)
            net, spec = create_segmentor("unet")
            train_segmentor(net, split["train"], split["val"], groups, TrainConfig(epochs=erm_epochs, seed=seed),
                            quiet=True)
            deployed = sum(p.numel() for p in net.parameters())
            base = score(net, split["test"], groups).frame().to_dict()
            rows.append(_row(seed, "deployed (no patch)", 0, deployed, base, None, 0.0))
            for label, opts in VARIANTS.items():
                t0 = time.perf_counter()
                res = get_method("apple").fit(net, spec, split["train"], split["val"], groups,
                                              Budget(epochs=epochs, seed=seed), opts, quiet=True)
                seconds = time.perf_counter() - t0
                frame, auc = validate(res.model, split["test"], groups, seed)
                summary = frame.to_dict()
                rows.append(_row(seed, label, res.trainable_params, deployed, summary, auc, seconds))
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    write_csv(args.out, frame)
    print(frame.to_string(index=False))
    print(f"settings: bias={args.bias} n={n} size={size} erm_epochs={erm_epochs} apple_epochs={epochs}")


def _row(seed: int, label: str, params: int, deployed: int, s: dict, auc: float | None, seconds: float) -> dict:
    f = s["fairness"]
    return {"seed": seed, "perturber": label, "params": params, "params_ratio": params / deployed,
            "dice": s["overall"]["dice"], "dice_gap": f.get("dice_delta"), "es_dice_sum": f.get("es_dice_sum"),
            "worst_group_dice": f.get("dice_worst"), "probe_auc": auc, "fit_s": round(seconds, 1)}


if __name__ == "__main__":
    main()
