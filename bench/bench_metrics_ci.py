"""Coverage of the stratified bootstrap CIs on synthetic populations with known truth, and their cost.

Run: python bench/bench_metrics_ci.py [--reps 400] [--resamples 1000]
Prints, per scenario, how often the 95% interval covers the population value of a group mean,
the gap (max - min of group means; and delta_signed, groups fixed from the data) and ES-Dice (sum
form), and the seconds per fairness_summary
with CIs for a 2,000-sample table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from applefair.metrics.fairness import Aggregator, fairness_summary

SCENARIOS = {  # name: (beta parameters per group, samples per group)
    "gap 0.10, n=60/40": ([(8, 2), (7, 3)], [60, 40]),
    "gap 0.02, n=60/40": ([(8, 2), (7.8, 2.2)], [60, 40]),
    "no gap, n=60/40": ([(8, 2), (8, 2)], [60, 40]),
    "gap 0.10, n=150/15": ([(8, 2), (7, 3)], [150, 15]),
    "3 groups, n=50/30/20": ([(8, 2), (7, 3), (7.5, 2.5)], [50, 30, 20]),
}


def truth(params, sizes) -> dict:
    means = np.array([a / (a + b) for a, b in params])
    share = np.array(sizes) / sum(sizes)
    mu = float((share * means).sum())
    return {("groups", "g0", "dice"): means[0], ("fairness", "dice_delta"): means.max() - means.min(),
            ("fairness", "dice_delta_signed"): means.max() - means.min(),
            ("fairness", "es_dice_sum"): mu / (1 + np.abs(mu - means).sum())}


def sample(rng, params, sizes) -> pd.DataFrame:
    vals = [rng.beta(a, b, n) for (a, b), n in zip(params, sizes, strict=True)]
    groups = [f"g{k}" for k, n in enumerate(sizes) for _ in range(n)]
    return pd.DataFrame({"id": range(len(groups)), "group": groups, "dice": np.concatenate(vals)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"coverage of 95% percentile intervals, {args.reps} repetitions, {args.resamples} resamples")
    print(f"{'scenario':<24} {'group mean':>10} {'delta':>8} {'signed':>8} {'ES sum':>8}")
    for name, (params, sizes) in SCENARIOS.items():
        t = truth(params, sizes)
        hits = dict.fromkeys(t, 0)
        names = [f"g{k}" for k in range(len(sizes))]
        for r in range(args.reps):
            samples = Aggregator(sample(rng, params, sizes), names, ["dice"]).resamples(args.resamples, seed=r)
            for key, value in t.items():
                lo, hi = np.percentile(samples[key], [2.5, 97.5])
                hits[key] += int(lo <= value <= hi)
        cov = [hits[k] / args.reps for k in t]
        print(f"{name:<24} {cov[0]:>10.3f} {cov[1]:>8.3f} {cov[2]:>8.3f} {cov[3]:>8.3f}")
    frame = pd.DataFrame({"id": range(2000), "group": rng.choice(["a", "b", "c", "d"], 2000),
                          **{m: rng.random(2000) for m in ("dice", "iou", "hd95", "nsd")}})
    t0 = time.perf_counter()
    fairness_summary(frame, "x", ["a", "b", "c", "d"], bootstrap=args.resamples)
    print(f"fairness_summary, 2,000 samples x 4 metrics x 4 groups, {args.resamples} resamples: "
          f"{time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
