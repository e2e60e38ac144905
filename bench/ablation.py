"""The APPLE ablation on the synthetic benchmark (configs/ablation.yaml).

    OMP_NUM_THREADS=1 python bench/ablation.py --config configs/ablation.yaml --out runs/ablation [--workers 2]
    python bench/ablation.py --config configs/ablation.yaml --out runs/ablation --summary-only

For every (bias, seed): generate the data, train the deployed U-Net by ERM (cached under
<out>/models), then for every variant fit APPLE and score the test split: overall Dice, Dice
gap, ES-Dice (Harvard-FairSeg sum form), worst group, and two fresh-probe AUCs (logistic
regression on pooled mean/std, 5-fold CV on the test split): on the perturbed latent(s) only,
and on *everything the decoder receives* (every skip and the bottleneck). One JSON line per run
in <out>/results.jsonl; a re-run skips finished runs. The summary gives mean and 95% t-intervals
over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from scipy import stats

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _data(out: Path, bias: str, seed: int, dcfg: dict):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.data.synthetic import generate

    folder = out / "data" / f"{bias}_s{seed}"
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        generate(folder, n=dcfg["n"], size=dcfg["size"], bias=bias, minority_share=dcfg["minority_share"],
                 seed=seed)
    frame = read_manifest(manifest)
    groups = GroupSpec("sex").fit(frame)
    return groups, {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}


def _deployed(out: Path, bias: str, seed: int, cfg: dict, split: dict, groups):
    from applefair.models.registry import create_segmentor, load_model_dir, save_model_dir
    from applefair.training.erm import TrainConfig, train_segmentor

    folder = out / "models" / f"{cfg['model']['name']}_{bias}_s{seed}"
    if (folder / "model.yaml").is_file():
        return load_model_dir(folder)
    margs = {k: v for k, v in cfg["model"].items() if k != "name"}
    net, spec = create_segmentor(cfg["model"]["name"], **margs)
    tcfg = TrainConfig(**{**cfg["erm"], "seed": seed})
    train_segmentor(net, split["train"], split["val"], groups, tcfg, quiet=True)
    save_model_dir(folder, net, spec)
    return net, spec


@torch.no_grad()
def decoder_inputs_auc(model, net, sites: list[str], dataset, seed: int) -> float:
    """Fresh-probe AUC on the pooled outputs of `sites` (read after any perturbation), concatenated."""
    from applefair.apple.discriminator import pool
    from applefair.metrics.leakage import probe_auc
    from applefair.models.forward import segment
    from applefair.models.sites import find_module

    feats: dict[str, list] = {s: [] for s in sites}
    handles = [find_module(net, s).register_forward_hook(lambda _m, _i, o, s=s: feats[s].append(pool(o)))
               for s in sites]
    try:
        model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False, generator=torch.Generator())
        for batch in loader:
            segment(model, batch)
    finally:
        for h in handles:
            h.remove()
    x = torch.cat([torch.cat(feats[s]) for s in sites], 1).numpy()
    return probe_auc(x, np.asarray(dataset.group_ids), seed=seed)


def _scores(summary: dict) -> dict:
    g = summary["groups"]
    return {"dice": summary["overall"]["dice"], "gap": summary["fairness"]["dice_delta"],
            "es_dice": summary["fairness"]["es_dice_sum"], "worst": summary["fairness"]["dice_worst"],
            **{f"dice_{k}": v["dice"] for k, v in g.items()}}


def run_one(job: dict) -> dict:
    """One (bias, seed, variant) run; returns the result row (or an error row: one failure never stops the rest)."""
    try:
        return _run_one(job)
    except Exception as exc:  # noqa: BLE001 - recorded in the results, reported in the summary
        import traceback

        return {"bias": job["bias"], "seed": job["seed"], "variant": job["name"], "model": job["model"]["name"],
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:], "seconds": 0}


def _run_one(job: dict) -> dict:
    torch.set_num_threads(1)
    from applefair.apple import AppleConfig, train_apple, validate
    from applefair.engine.io import state_dict_hash
    from applefair.metrics.evaluate import score
    from applefair.models.sites import unet_skip_sites

    out, cfg, bias, seed, name, over = Path(job["out"]), job["cfg"], job["bias"], job["seed"], job["name"], job["over"]
    cfg = {**cfg, "model": job["model"], "erm": job["erm"]}
    t0 = time.time()
    groups, split = _data(out, bias, seed, cfg["data"])
    net, spec = _deployed(out, bias, seed, cfg, split, groups)
    all_sites = list(dict.fromkeys((spec.skip_sites or (unet_skip_sites(net) if spec.name == "unet" else []))
                                   + [spec.site]))
    before = score(net, split["test"], groups).frame().to_dict()
    base_auc = decoder_inputs_auc(net, net, all_sites, split["test"], seed)
    base_auc_site = decoder_inputs_auc(net, net, [spec.site], split["test"], seed)
    opts = {**cfg["apple"], **over, "seed": seed}
    if opts.get("sites") == "all":
        opts["sites"] = all_sites
    acfg = AppleConfig(**opts)
    deployed_hash = state_dict_hash(net)
    res = train_apple(net, spec.site, split["train"], split["val"], groups, acfg, quiet=True)
    patched, history = res.patched, res.history
    after_frame, auc_sites = validate(patched, split["test"], groups, seed)
    after = after_frame.to_dict()
    auc_all = decoder_inputs_auc(patched, net, all_sites, split["test"], seed)
    last = history[-1]
    row = {"bias": bias, "seed": seed, "variant": name, "model": cfg["model"]["name"], "options": over,
           "before": {**_scores(before), "auc_site": base_auc_site, "auc_all": base_auc},
           "after": {**_scores(after), "auc_site": auc_sites, "auc_all": auc_all},
           "selected_epoch": res.selected_epoch, "unchanged": state_dict_hash(net) == deployed_hash,
           "final_train_d_acc": last.get("d_acc"), "final_val_probe_auc": last.get("probe_auc"),
           "seconds": round(time.time() - t0, 1)}
    patched.remove()
    return row


def summarise(rows: list[dict]) -> pd.DataFrame:
    """Mean and 95% t-interval half-width over seeds, per (model, bias, variant)."""
    flat = []
    for r in rows:
        if "error" in r:
            continue
        b, a = r["before"], r["after"]
        flat.append({"model": r["model"], "bias": r["bias"], "variant": r["variant"], "seed": r["seed"],
                     "gap_before": b["gap"], "gap_after": a["gap"],
                     "gap_change_pct": 100.0 * (a["gap"] - b["gap"]) / max(b["gap"], 1e-9),
                     "dice_before": b["dice"], "dice_after": a["dice"], "dice_change": a["dice"] - b["dice"],
                     "es_before": b["es_dice"], "es_after": a["es_dice"],
                     "auc_site_before": b["auc_site"], "auc_site_after": a["auc_site"],
                     "auc_all_after": a["auc_all"], "d_acc": r.get("final_train_d_acc"),
                     "auc_val_last": r.get("final_val_probe_auc"),
                     "epoch": r["selected_epoch"]})
    df = pd.DataFrame(flat)
    out = []
    for key, sub in df.groupby(["model", "bias", "variant"], sort=False):
        row = dict(zip(["model", "bias", "variant"], key, strict=True))
        row["n"] = len(sub)
        for col in df.columns[4:]:
            v = sub[col].to_numpy(dtype=float)
            half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
            row[col] = float(v.mean())
            row[f"{col}_ci"] = float(half)
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    cols = [("gap_before", "gap before", 100), ("gap_after", "gap after", 100),
            ("gap_change_pct", "gap change %", 1), ("dice_change", "Dice change", 100),
            ("es_after", "ES-Dice after", 100), ("auc_site_before", "probe AUC site, before", 1),
            ("auc_site_after", "probe AUC site, after", 1), ("auc_all_after", "probe AUC all decoder inputs, after", 1),
            ("auc_val_last", "val probe AUC, last epoch", 1), ("d_acc", "D_p train acc, last epoch", 1),
            ("epoch", "sel. epoch", 1)]
    head = "| model | bias | variant | n | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for _, r in table.iterrows():
        cells = []
        for c, _label, scale in cols:
            m, h = r[c] * scale, r[f"{c}_ci"] * scale
            fmt = "{:.2f}" if scale == 1 and ("auc" in c or c == "d_acc") else "{:.1f}"
            cells.append(f"{fmt.format(m)} ± {fmt.format(h)}" if np.isfinite(h) else fmt.format(m))
        lines.append(f"| {r['model']} | {r['bias']} | {r['variant']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ablation.yaml")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", default="", help="comma list of variant names to run (default: all)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.jsonl"
    done = set()
    if res_path.is_file():
        for line in res_path.read_text().splitlines():
            r = json.loads(line)
            if "error" not in r:
                done.add((r["model"], r["bias"], r["seed"], r["variant"]))
    only = {v for v in args.only.split(",") if v}
    jobs = []
    for seed in cfg["seeds"]:  # seed-major: every variant gets its first seed early
        for exp in cfg["experiments"]:
            if seed not in exp.get("seeds", cfg["seeds"]):
                continue
            for name, over in exp["variants"].items():
                if only and name not in only:
                    continue
                model, erm = exp.get("model", cfg["model"]), exp.get("erm", cfg["erm"])
                if (model["name"], exp["bias"], seed, name) in done:
                    continue
                jobs.append({"out": str(out), "cfg": cfg, "bias": exp["bias"], "seed": seed, "name": name,
                             "over": over or {}, "model": model, "erm": erm})
    if not args.summary_only and jobs:
        # jobs whose deployed model exists, and one job per missing model, run at once; the other jobs of a
        # missing model wait for it, so parallel workers never train the same model twice
        def ready(j: dict) -> bool:
            return (out / "models" / f"{j['model']['name']}_{j['bias']}_s{j['seed']}" / "model.yaml").is_file()

        first = {}
        for j in jobs:
            if not ready(j):
                first.setdefault((j["model"]["name"], j["bias"], j["seed"]), j)
        now = list(first.values()) + [j for j in jobs if ready(j)]
        later = [j for j in jobs if j not in now]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for phase in (now, later):
                for fut in as_completed([pool.submit(run_one, j) for j in phase]):
                    _append(res_path, fut.result())
    rows = [json.loads(line) for line in res_path.read_text().splitlines()] if res_path.is_file() else []
    if rows:
        table = summarise(rows)
        table.to_csv(out / "summary.csv", index=False)
        (out / "ablation.md").write_text(to_markdown(table))
        print(to_markdown(table))


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=float) + "\n")
    print(json.dumps({k: row[k] for k in ("bias", "seed", "variant", "seconds")}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
