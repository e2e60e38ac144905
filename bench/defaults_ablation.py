"""Choosing APPLE's defaults by effect: every variant on every benchmark, model and seed.

    OMP_NUM_THREADS=1 python bench/defaults_ablation.py --out runs/defaults --workers 2
    python bench/defaults_ablation.py --out runs/defaults --summary-only --results-prefix bench/results/defaults

Benchmarks (fixed before any APPLE result on them): the misused-cue mechanisms `nodules/spurious`,
`nodules/marker`, `nodules/texture` and `vessels/spurious` (a group cue in every minority image, the
misuse only in the training masks), and two controls: `nodules/none` (no bias) and `nodules/contrast`
(a difficulty-type gap: information missing from the minority's images). For every (model, benchmark,
seed): the data, the deployed model (ERM), its test evaluation; then every variant of APPLE through the
library's steps (`train_apple` with the model's skip sites, `workflows.evaluate.evaluate_change` on the
test split, paired CIs against the deployed model), at the *selected* epoch and at the *last* epoch.
Each run saves its patch (for measures computed later) and one JSON line (a re-run skips finished runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

os.environ.setdefault("OMP_NUM_THREADS", "1")

BENCHES = {"spurious": ("nodules", "spurious"), "marker": ("nodules", "marker"), "texture": ("nodules", "texture"),
           "vessels": ("vessels", "spurious"), "none": ("nodules", "none"), "contrast": ("nodules", "contrast")}
MISUSED = ("spurious", "marker", "texture", "vessels")
MODELS = {"unet": ("unet", {"channels": [16, 32, 64, 128], "num_res_units": 1}),
          "attention_unet": ("attention_unet", {"channels": [16, 32, 64, 128]}),
          "sam": ("sam", {"variant": "tiny"})}
PAPER = {"perturber": "unet", "width": 32}
# variant -> AppleConfig options (on top of epochs, batch size, seed); "current" is the shipped default
# when this ablation was designed
VARIANTS: dict[str, dict] = {
    "current": {},
    "paper": PAPER,
    "control": {**PAPER, "objective": "none"},  # no adversary, the same L_seg weighting
    "norm": {**PAPER, "objective": "none", "normalize": "instance", "perturb": "all"},
    "adv_all": {**PAPER, "perturb": "all", "d_inputs": "all", "d_kind": "spatial", "d_ensemble": 3, "d_reinit": 5},
    "norm_adv_all": {**PAPER, "normalize": "instance", "perturb": "all", "d_inputs": "all", "d_kind": "spatial",
                     "d_ensemble": 3, "d_reinit": 5},
    "dist_tokens": {**PAPER, "objective": "none", "perturb": "all", "dist_match": "energy",
                    "dist_features": "tokens", "dist_weight": 10.0},
    # the patch fitted to the deployed model's own output (fidelity) instead of the training masks, with the
    # output's invariance to the groups' mean translation of every decoder input (`invariance`)
    "fid": {**PAPER, "objective": "none", "perturb": "all", "seg_target": "deployed"},
    "fid_inv": {**PAPER, "objective": "none", "perturb": "all", "seg_target": "deployed", "invariance": 10.0},
    "inv": {**PAPER, "objective": "none", "perturb": "all", "invariance": 10.0},
    "fid_inv_adv": {**PAPER, "perturb": "all", "seg_target": "deployed", "invariance": 10.0, "d_inputs": "all",
                    "d_kind": "spatial", "d_ensemble": 3, "d_reinit": 5},
    "fid_inv_norm": {**PAPER, "objective": "none", "perturb": "all", "seg_target": "deployed", "invariance": 10.0,
                     "normalize": "instance"},
    # the paper's game (KL adversary, U shape) with the fidelity target, and use-invariance at the model's site
    "paper_fid": {**PAPER, "seg_target": "deployed"},
    "fid_inv_site": {**PAPER, "objective": "none", "seg_target": "deployed", "invariance": 1.0},
    # the paper's game at every decoder input (a perturber on each skip and the bottleneck, D_p over all of
    # them), with the training masks or the fidelity target; on a model without skips this is `paper`
    "paper_all": {**PAPER, "perturb": "all", "d_inputs": "all"},
    "paper_fid_all": {**PAPER, "perturb": "all", "d_inputs": "all", "seg_target": "deployed"},
    # `paper` from other initialisations of the game (APPLE's seed + offset; data and deployed model unchanged):
    # how much of an outcome is the draw, and what choosing among restarts on validation gains
    "paper_r1": {**PAPER, "seed_offset": 1000},
    "paper_r2": {**PAPER, "seed_offset": 2000},
    "paper_fid_r1": {**PAPER, "seg_target": "deployed", "seed_offset": 1000},
    "paper_fid_r2": {**PAPER, "seg_target": "deployed", "seed_offset": 2000},
}
TARGET = {"gap_reduction": 0.5, "dice_drop": 0.01}


def _data(out: Path, a: argparse.Namespace, bench: str, seed: int):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.data.synthetic import generate

    kind, bias = BENCHES[bench]
    folder = out / "data" / f"{bench}_s{a.strength}_n{a.n}_seed{seed}"
    if not (folder / "manifest.csv").is_file():
        generate(folder, n=a.n, size=a.size, bias=bias, kind=kind, minority_share=a.minority_share,
                 strength=a.strength, seed=seed)
    frame = read_manifest(folder / "manifest.csv")
    groups = GroupSpec("sex", ["M", "F"]) if kind == "nodules" else GroupSpec.parse("age:0,60,inf")
    groups.fit(frame)
    return groups, {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}


def _deployed(out: Path, a: argparse.Namespace, model: str, bench: str, seed: int, split: dict, groups):
    from applefair.models.registry import is_model_folder, load_model_dir, save_model_dir
    from applefair.training.erm import TrainConfig
    from applefair.workflows.train import build_model, train_deployed

    folder = out / "models" / f"{model}_{bench}_seed{seed}"
    if is_model_folder(folder):
        return load_model_dir(folder)
    name, args = MODELS[model]
    net, spec = build_model(name, args=args, seed=seed)
    train_deployed(net, spec, split, groups, TrainConfig(epochs=a.erm_epochs, seed=seed))
    save_model_dir(folder, net, spec)
    return net, spec


def _numbers(ev, groups) -> dict:
    """The evaluation's numbers: overall, per group, gap, ES-Dice, the paired change of each, leakage."""
    f = ev.frame
    out = {"dice": f.dice, "gap": f.gap(), "es_dice": f.es(), "groups": {g: f.group(g) for g in groups.groups},
           "gap_ci": f.ci.get("fairness", {}).get("dice_delta")}
    if ev.paired is not None:
        p = ev.paired
        out["change"] = {"gap": p["fairness"]["dice_delta"]["diff"], "gap_ci": p["fairness"]["dice_delta"]["ci"],
                         "gap_signed": p["fairness"]["dice_delta_signed"]["diff"],
                         "gap_signed_ci": p["fairness"]["dice_delta_signed"]["ci"],
                         "dice": p["overall"]["dice"]["diff"], "dice_ci": p["overall"]["dice"]["ci"]}
    for probe in ("auc", "mlp_auc", "spatial_auc") if ev.leakage else ():  # what the decoder receives, per input
        out[probe] = {s: v.get(f"{probe}_after", v.get(f"{probe}_before")) for s, v in ev.leakage.items()}
    return out


def _run_job(job: dict) -> list[dict]:
    """One (model, benchmark, seed): the deployed model, then every variant not yet done; each run's line is
    appended to results.jsonl as soon as it is done (one append per line)."""
    torch.set_num_threads(1)
    import warnings

    warnings.simplefilter("ignore")
    from applefair.apple import AppleConfig, train_apple
    from applefair.apple.game import decoder_inputs
    from applefair.apple.patch import save_patch
    from applefair.engine.io import state_dict_hash
    from applefair.workflows.evaluate import evaluate_change

    a, out, seed = argparse.Namespace(**job["args"]), Path(job["out"]), job["seed"]
    groups, split = _data(out, a, job["bench"], seed)
    t0 = time.time()
    net, spec = _deployed(out, a, job["model"], job["bench"], seed, split, groups)
    deploy_seconds = round(time.time() - t0, 1)
    net.eval()
    inputs = decoder_inputs(spec.site, spec.skip_sites)
    deployed_hash = state_dict_hash(net)
    base = evaluate_change(net, split["test"], groups, sites=inputs, bootstrap=a.resamples, seed=seed)
    rows = []
    for variant in job["variants"]:
        t1 = time.time()
        options = dict(VARIANTS[variant])
        apple_seed = seed + options.pop("seed_offset", 0)
        cfg = AppleConfig(**{"epochs": a.apple_epochs, "batch_size": 16, **options, "seed": apple_seed})
        res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True, head=spec.head,
                          skip_sites=spec.skip_sites)
        patched = res.patched
        name = f"{job['model']}_{job['bench']}_seed{seed}_{variant}"
        save_patch(out / "patches" / f"{name}.safetensors", patched,
                   {"model": spec.name, "groups": groups.to_dict(), "apple": cfg.to_dict(),
                    "selected_epoch": res.selected_epoch, "deployed_weights_sha256": deployed_hash})
        selected = evaluate_change(patched, split["test"], groups, sites=inputs, bootstrap=a.resamples, seed=seed)
        best = {k: v.clone() for k, v in patched.perturbers.state_dict().items()}
        patched.perturbers.load_state_dict(res.last_state)
        last = evaluate_change(patched, split["test"], groups, sites=inputs, bootstrap=a.resamples, seed=seed)
        patched.perturbers.load_state_dict(best)
        patched.remove()
        row = {"model": job["model"], "bench": job["bench"], "seed": seed, "variant": variant,
                     "options": VARIANTS[variant], "apple": cfg.to_dict(), "before": _numbers(base, groups),
                     "selected": _numbers(selected, groups), "last": _numbers(last, groups),
                     "selected_epoch": res.selected_epoch, "unchanged": state_dict_hash(net) == deployed_hash,
                     "patch_params": sum(p.numel() for p in patched.perturbers.parameters()),
                     "deployed_params": sum(p.numel() for p in net.parameters()),
                     "history": [{k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in h.items()}
                                 for h in res.history],
               "seconds": round(time.time() - t1, 1), "deploy_seconds": deploy_seconds}
        with (out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def _done(path: Path) -> set[tuple]:
    if not path.is_file():
        return set()
    return {(r["model"], r["bench"], r["seed"], r["variant"]) for r in map(json.loads, path.read_text().splitlines())}


def run(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = _done(results)
    jobs = []
    for model in a.models.split(","):
        for bench in a.benches.split(","):
            for seed in a.seeds:
                todo = [v for v in a.variants.split(",") if (model, bench, seed, v) not in done]
                if todo:
                    jobs.append({"model": model, "bench": bench, "seed": seed, "variants": todo, "out": str(out),
                                 "args": vars(a)})
    jobs.sort(key=lambda j: j["seed"])  # every cell's first seed before any cell's second: partial runs stay balanced
    print(f"{len(jobs)} jobs ({sum(len(j['variants']) for j in jobs)} runs) to do", flush=True)
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        pending = {pool.submit(_run_job, j): j for j in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                try:
                    rows = fut.result()
                except Exception as exc:  # noqa: BLE001 - report and go on with the other jobs
                    print(f"FAILED {job['model']} {job['bench']} seed{job['seed']}: {exc!r}", flush=True)
                    continue
                print(f"done {job['model']} {job['bench']} seed{job['seed']} ({len(rows)} runs)", flush=True)


def _t_ci(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def runs_table(rows: list[dict], at: str = "selected") -> pd.DataFrame:
    recs = []
    for r in rows:
        b, s = r["before"], r[at]
        ch = s.get("change", {})
        reduction = 1 - s["gap"] / b["gap"] if b["gap"] else float("nan")
        ci = ch.get("gap_ci") or [float("nan")] * 2
        recs.append({"model": r["model"], "bench": r["bench"], "seed": r["seed"], "variant": r["variant"],
                     "gap_before": 100 * b["gap"], "gap_after": 100 * s["gap"], "gap_reduction": 100 * reduction,
                     "gap_change_ci_low": 100 * ci[0], "gap_change_ci_high": 100 * ci[1],
                     "dice_change": 100 * ch.get("dice", float("nan")), "selected_epoch": r["selected_epoch"],
                     "auc_before": np.nanmean(list(b.get("auc", {}).values()) or [np.nan]),
                     "auc_after": np.nanmean(list(s.get("auc", {}).values()) or [np.nan]),
                     # the highest spatial-probe AUC over the decoder inputs (recorded from this version on)
                     "spatial_auc_after": max([v for v in s.get("spatial_auc", {}).values() if v is not None]
                                              or [float("nan")]),
                     "meets": bool(reduction >= TARGET["gap_reduction"] and ci[1] < 0
                                   and ch.get("dice", -1) >= -TARGET["dice_drop"]),
                     "widened": bool(ci[0] > 0), "patch_params": r["patch_params"],
                     "deployed_params": r["deployed_params"]})
    return pd.DataFrame(recs)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    recs = []
    for (model, bench, variant), sub in runs.groupby(["model", "bench", "variant"], sort=False):
        rec = {"model": model, "bench": bench, "variant": variant, "n": len(sub)}
        for col in ("gap_before", "gap_after", "gap_reduction", "dice_change", "auc_after", "spatial_auc_after",
                    "selected_epoch"):
            v = sub[col].to_numpy(float)
            v = v[np.isfinite(v)] if col == "spatial_auc_after" else v
            lo, hi = _t_ci(v)
            rec[col] = float(v.mean()) if len(v) else float("nan")
            rec[f"{col}_ci"] = [lo, hi]
        rec["meets"] = f"{int(sub['meets'].sum())}/{len(sub)}"
        rec["widened"] = f"{int(sub['widened'].sum())}/{len(sub)}"
        recs.append(rec)
    return pd.DataFrame(recs)


def markdown(summ: pd.DataFrame, title: str) -> str:
    head = ["model", "bench", "variant", "n", "gap ERM", "gap APPLE", "reduction %", "Dice change", "probe AUC after",
            "spatial AUC after (max)", "sel. epoch", "seeds meeting target", "seeds widened"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(r, c, d=1):
        lo, hi = r[f"{c}_ci"]
        return f"{r[c]:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]" if np.isfinite(lo) else f"{r[c]:.{d}f}"
    for _, r in summ.iterrows():
        lines.append("| " + " | ".join([r["model"], r["bench"], r["variant"], str(r["n"]), f(r, "gap_before"),
                                        f(r, "gap_after"), f(r, "gap_reduction", 0), f(r, "dice_change"),
                                        f(r, "auc_after", 2), f(r, "spatial_auc_after", 2), f(r, "selected_epoch"),
                                        r["meets"], r["widened"]])
                     + " |")
    return "\n".join(lines) + "\n"


def compact_table(rows: list[dict]) -> str:
    """One row per (model, benchmark, variant): the selected epoch's gap with its t-interval over seeds, the
    reduction per seed, the seeds meeting the target, widening at the selected and the last epoch, and the
    probes after (docs/ablation.md)."""
    sel_runs, last_runs = runs_table(rows, "selected"), runs_table(rows, "last")
    summ = summary(sel_runs)
    rank = {**{m: i for i, m in enumerate(MODELS)}, **{b: i for i, b in enumerate(BENCHES)},
            **{v: i for i, v in enumerate(VARIANTS)}}
    keys = zip(summ.model, summ.bench, summ.variant, strict=True)
    summ = summ.assign(_k=[(rank[m], rank[b], rank[v]) for m, b, v in keys])
    head = ["model", "benchmark", "variant", "seeds", "gap ERM", "gap APPLE (selected)", "reduction % per seed",
            "Dice change", "seeds meeting", "widened (selected / last)", "gap change at last epoch",
            "probe AUC after: logistic (mean over inputs) / spatial (max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ci(r, c, d=1):
        lo, hi = r[f"{c}_ci"]
        return f"{r[c]:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]" if np.isfinite(lo) else f"{r[c]:.{d}f}"
    for _, r in summ.sort_values("_k").iterrows():
        key = (sel_runs.model == r.model) & (sel_runs.bench == r.bench) & (sel_runs.variant == r.variant)
        sub, subl = sel_runs[key].sort_values("seed"), last_runs[key].sort_values("seed")
        per = ", ".join(f"{x:.0f}" for x in sub.gap_reduction)
        last = ", ".join(f"{a - b:+.1f}" for a, b in zip(subl.gap_after, subl.gap_before, strict=True))
        spatial = f"{r.spatial_auc_after:.2f}" if np.isfinite(r.spatial_auc_after) else "n/a"
        lines.append("| " + " | ".join([r.model, r.bench, r.variant, str(r.n), ci(r, "gap_before"), ci(r, "gap_after"),
                                        per, ci(r, "dice_change"), r.meets,
                                        f"{int(sub.widened.sum())} / {int(subl.widened.sum())}", last,
                                        f"{r.auc_after:.2f} / {spatial}"]) + " |")
    return "\n".join(lines) + "\n"


def summarise(a: argparse.Namespace) -> None:
    rows = [json.loads(x) for x in (Path(a.out) / "results.jsonl").read_text().splitlines()]
    text = []
    for at in ("selected", "last"):
        runs = runs_table(rows, at)
        summ = summary(runs)
        text.append(markdown(summ, f"At the {at} epoch (mean [95% t-interval over seeds])"))
        if a.results_prefix:
            runs.to_csv(f"{a.results_prefix}_{at}_runs.csv", index=False)
            summ.to_csv(f"{a.results_prefix}_{at}_summary.csv", index=False)
    text.append("### Per model, benchmark and variant (the table of docs/ablation.md)\n\n" + compact_table(rows))
    print("\n".join(text))
    if a.results_prefix:
        Path(f"{a.results_prefix}_summary.md").write_text("\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/defaults")
    ap.add_argument("--models", default="unet,sam")
    ap.add_argument("--benches", default=",".join(BENCHES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--minority-share", type=float, default=0.25)
    ap.add_argument("--strength", type=float, default=1.5)
    ap.add_argument("--erm-epochs", type=int, default=30)
    ap.add_argument("--apple-epochs", type=int, default=15)
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--results-prefix", default="")
    a = ap.parse_args()
    if not a.summary_only:
        run(a)
    summarise(a)


if __name__ == "__main__":
    sys.exit(main())
