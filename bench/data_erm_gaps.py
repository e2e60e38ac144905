"""Does each synthetic bias mechanism give an ERM model a Dice gap between groups?

For every (kind, bias, seed): generate the benchmark, train a small MONAI UNet by ERM (the
same trainer as `applefair demo`), score the test split, and bootstrap a 95% CI of the gap
(majority mean Dice - minority mean Dice) over test images, resampling each group separately.
Rows are appended to a CSV as they finish, so a killed run resumes where it stopped.

Example: OMP_NUM_THREADS=1 python bench/data_erm_gaps.py --out bench/results/data_erm_gaps.csv --seeds 0
3-D (`nodules3d`, MONAI's 3-D UNet): --kinds nodules3d --size 32 --n 160 --batch-size 4 --lr 1e-2 --epochs 25
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import BIASES, KIND_OF_BIAS, generate
from applefair.metrics.evaluate import predict_scores
from applefair.models.registry import create_segmentor
from applefair.training.erm import TrainConfig, train_segmentor

MINORITY = {"nodules": ("sex", "F"), "vessels": ("age", None), "nodules3d": ("sex", "F")}


def bootstrap_gap(major: np.ndarray, minor: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of mean(major) - mean(minor), resampling each group separately."""
    rng = np.random.default_rng(seed)
    a = rng.choice(major, size=(reps, len(major))).mean(1)
    b = rng.choice(minor, size=(reps, len(minor))).mean(1)
    lo, hi = np.percentile(a - b, [2.5, 97.5])
    return float(lo), float(hi)


def run_one(kind: str, bias: str, seed: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="erm_gap_") as tmp:
        t0 = time.time()
        manifest = generate(Path(tmp) / "data", n=args.n, size=args.size, bias=bias, minority_share=args.share,
                            strength=args.strength, seed=seed, kind=kind)
        frame = read_manifest(manifest)
        if kind == "vessels":  # the generator's minority is age >= 60
            frame["group"] = np.where(frame["age"].astype(float) >= 60, "old", "young")
            minor_name = "old"
        else:
            frame["group"] = frame["sex"]
            minor_name = "F"
        groups = GroupSpec("group").fit(frame)
        ds = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}
        net, _ = create_segmentor("unet", channels=args.channels, spatial_dims=3 if kind == "nodules3d" else 2)
        cfg = TrainConfig(epochs=args.epochs, seed=seed, batch_size=args.batch_size, lr=args.lr)
        train_segmentor(net, ds["train"], ds["val"], groups, cfg, quiet=True)
        scores = predict_scores(net, ds["test"], groups)
        minor = scores.loc[scores["group"] == minor_name, "dice"].to_numpy()
        major = scores.loc[scores["group"] != minor_name, "dice"].to_numpy()
        lo, hi = bootstrap_gap(major, minor, seed=seed)
        return {"kind": kind, "bias": bias, "type": KIND_OF_BIAS[bias], "seed": seed, "strength": args.strength,
                "n_test_major": len(major),
                "n_test_minor": len(minor), "dice_major": major.mean(), "dice_minor": minor.mean(),
                "gap": major.mean() - minor.mean(), "ci_lo": lo, "ci_hi": hi, "excludes_zero": bool(lo > 0 or hi < 0),
                "seconds": round(time.time() - t0, 1)}


def markdown(frames: list[Path]) -> str:
    """The docs table from one or more result CSVs (one row per kind, mechanism and seed)."""
    d = pd.concat([pd.read_csv(f) for f in frames], ignore_index=True)
    d["strength"] = d["strength"].fillna(1.0) if "strength" in d else 1.0
    d = d.sort_values(["kind", "strength", "seed"])
    order = {b: i for i, b in enumerate(BIASES)}
    d = d.sort_values(["kind", "bias"], key=lambda c: c.map(order) if c.name == "bias" else c, kind="stable")
    lines = ["| kind | mechanism | type | strength | seed | Dice majority | Dice minority | gap | 95% CI "
             "| CI excludes 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d.itertuples():
        lines.append(f"| {r.kind} | {r.bias} | {r.type} | {r.strength:g} | {r.seed} | {r.dice_major:.3f} | "
                     f"{r.dice_minor:.3f} | "
                     f"{r.gap:+.3f} | [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}] | {'yes' if r.excludes_zero else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, nargs="+", help="Only print the markdown table of these result CSVs.")
    p.add_argument("--out", type=Path, default=Path("bench/results/data_erm_gaps.csv"))
    p.add_argument("--kinds", nargs="+", default=["nodules", "vessels"])
    p.add_argument("--biases", nargs="+", default=list(BIASES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--share", type=float, default=0.25)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args()
    if args.table:
        print(markdown(args.table))
        return
    torch.set_num_threads(1)
    done = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame(columns=["kind", "bias", "seed"])
    for seed in args.seeds:
        for kind in args.kinds:
            for bias in args.biases:
                if ((done["kind"] == kind) & (done["bias"] == bias) & (done["seed"] == seed)).any():
                    continue
                row = run_one(kind, bias, seed, args)
                print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                done.to_csv(args.out, index=False)
    summary = done.groupby(["kind", "bias"])[["gap", "ci_lo", "ci_hi"]].mean()
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
