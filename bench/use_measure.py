"""Does the use measure read what it should, on benchmarks where the answer is known?

    OMP_NUM_THREADS=1 python bench/use_measure.py --out runs/use_measure --models unet \
        --results bench/results/use_measure_unet.jsonl --tables bench/results/use_measure_unet
    OMP_NUM_THREADS=1 python bench/use_measure.py --out runs/use_measure --models sam \
        --results bench/results/use_measure_sam.jsonl --tables bench/results/use_measure_sam
    python bench/use_measure.py --out runs/use_measure --train-only          # ERM models only (cached)
    python bench/use_measure.py --out runs/use_measure --summary-only --results bench/results/use_measure_unet.jsonl
    python bench/use_measure.py --out runs/use_measure --time-probe bench/results/use_measure_probe_speed.json

For every (model, bias, seed): generate `nodules` data (`applefair.data.synthetic.generate`), train
the deployed model by ERM (cached under <out>/models), then on the test split: per-group Dice, the
fresh probes (logistic, MLP, spatial) at every decoder input, and the use measure
(`applefair.metrics.use.use_measure`) in every configuration the defaults are chosen from: both
statistics (`map`, `channel`), every decoder input at once and each one alone. One JSON line per run
(a re-run skips finished runs); the summary is the mean and 95% t-interval over seeds.

Known answers: `spurious` (a present, misused group cue; strength 1.5) should read high before any
mitigation, with a Dice gain for the minority when it is moved to the majority's statistics; `none`
(no difference between groups) should read at its permutation null; `contrast` (the minority's images
carry less information) may move the output but should not recover Dice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

os.environ.setdefault("OMP_NUM_THREADS", "1")

MODELS = {"unet": ("unet", {"channels": [16, 32, 64, 128], "num_res_units": 1}),
          "sam": ("sam", {"tiny": True})}
STRENGTH = {"spurious": 1.5, "contrast": 1.0, "none": 1.0}


def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


def _data(out: Path, a: argparse.Namespace, bias: str, seed: int):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.data.synthetic import generate

    folder = out / "data" / f"{bias}_n{a.n}_s{STRENGTH[bias]}_seed{seed}"
    if not (folder / "manifest.csv").is_file():
        generate(folder, n=a.n, size=a.size, bias=bias, minority_share=a.minority_share, strength=STRENGTH[bias],
                 seed=seed, kind="nodules")
    frame = read_manifest(folder / "manifest.csv")
    groups = GroupSpec("sex", groups=["M", "F"]).fit(frame)
    return groups, {s: SegmentationDataset(frame, groups, s) for s in ("train", "val", "test")}


def _deployed(out: Path, a: argparse.Namespace, model: str, bias: str, seed: int, split: dict, groups):
    from applefair.models.registry import load_model_dir, save_model_dir
    from applefair.training.erm import TrainConfig
    from applefair.workflows.train import build_model, train_deployed

    folder = out / "models" / f"{model}_{bias}_n{a.n}_seed{seed}"
    if (folder / "model.yaml").is_file():
        return load_model_dir(folder)
    name, args = MODELS[model]
    tiny = bool(args.get("tiny"))
    net, spec = build_model(name, tiny=tiny, args={k: v for k, v in args.items() if k != "tiny"}, seed=seed)
    train_deployed(net, spec, split, groups, TrainConfig(epochs=a.erm_epochs, seed=seed), quiet=True)
    save_model_dir(folder, net.eval(), spec)
    return net.eval(), spec


def _roles(spec) -> dict[str, str]:
    return {**{s: "skip" for s in spec.skip_sites}, spec.site: "bottleneck"}


def _measure(net, spec, split: dict, groups, seed: int, a: argparse.Namespace) -> dict:
    """Dice per group, the three probes per decoder input, the use measure in every configuration; timed."""
    from applefair.metrics.evaluate import probe_leakage, score
    from applefair.metrics.leakage import probe_report
    from applefair.metrics.use import use_measure
    from applefair.models.sites import site_modules

    roles = _roles(spec)
    test = split["test"]
    started = time.perf_counter()
    scored = score(net, test, groups, metrics=("dice",), capture=site_modules(net, list(roles)), keep_maps=True)
    scored.roles = roles
    res: dict = {"score_s": time.perf_counter() - started}
    m = scored.frame(bootstrap=a.resamples, seed=seed).to_dict()
    res["dice"] = m["overall"]["dice"]
    for g in groups.groups:
        res[f"dice_{g}"], res[f"dice_{g}_ci"] = m["groups"][g]["dice"], m["ci"]["groups"][g]["dice"]
    res["gap_signed"] = m["fairness"]["dice_delta_signed"]
    res["gap_signed_ci"] = m["ci"]["fairness"]["dice_delta_signed"]
    res["gap_best"], res["gap_worst"] = m["fairness"]["dice_worst_group"], None
    res["map_bytes_per_image"] = int(sum(v[0].nbytes for v in scored.maps.values()))
    res["leakage"], res["probe_s"] = {}, {}
    for site in roles:  # one site at a time, to time each
        one = type(scored)(scored.per_sample, {site: scored.latents[site]}, scored.group_ids, groups,
                           maps={site: scored.maps[site]}, roles=roles)
        t = time.perf_counter()
        res["leakage"][site] = probe_leakage(one, seed=seed, resamples=a.resamples)[site]
        res["probe_s"][site] = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        probe_leakage(one, probes=("spatial",), seed=seed, resamples=0)
        res["probe_s"][f"{site}:spatial"] = time.perf_counter() - t
        res["probe_s"][f"{site}:spatial_cpu"] = time.process_time() - c
    if seed == a.seeds[0]:  # the spatial probe's speed on a larger split: the training split's maps
        big = score(net, split["train"], groups, metrics=("dice",), capture=site_modules(net, list(roles)),
                    keep_maps=True)
        res["spatial_probe_train_split"] = {"n": len(split["train"])}
        for site in roles:
            t, c = time.perf_counter(), time.process_time()
            auc = probe_report(None, big.group_ids, probes=("spatial",), maps=big.maps[site], seed=seed,
                               resamples=0)["spatial"]["auc"]
            res["spatial_probe_train_split"][site] = {"seconds": time.perf_counter() - t,
                                                      "cpu_seconds": time.process_time() - c, "auc": auc}
    res["use"], res["use_s"] = {}, {}
    for statistic in ("map", "channel"):
        t, c = time.perf_counter(), time.process_time()
        res["use"][statistic] = use_measure(net, test, groups, site_modules(net, list(roles)), statistic=statistic,
                                            per_site=True, permutations=a.permutations, resamples=a.resamples,
                                            seed=seed, roles=roles)
        res["use_s"][statistic] = time.perf_counter() - t
        res["use_s"][f"{statistic}_cpu"] = time.process_time() - c
    return res


def time_probe(a: argparse.Namespace, out: Path) -> dict:
    """The spatial probe's cost per decoder input on one core: wall and CPU seconds on the test split and on the
    (larger) training split, and the memory the kept maps take per image."""
    from applefair.metrics.evaluate import score
    from applefair.metrics.leakage import probe_report
    from applefair.models.sites import site_modules

    record: dict = {"threads": 1, "model": a.models.split(",")[0], "bias": "spurious", "seed": a.seeds[0]}
    groups, split = _data(a.out, a, "spurious", a.seeds[0])
    net, spec = _deployed(a.out, a, record["model"], "spurious", a.seeds[0], split, groups)
    roles = _roles(spec)
    for name in ("test", "train"):
        scored = score(net, split[name], groups, metrics=("dice",), capture=site_modules(net, list(roles)),
                       keep_maps=True)
        entry: dict = {"n": len(split[name]),
                       "map_bytes_per_image": int(sum(m[0].nbytes for m in scored.maps.values())), "sites": {}}
        for site in roles:
            t, c = time.perf_counter(), time.process_time()
            auc = probe_report(None, scored.group_ids, probes=("spatial",), maps=scored.maps[site], seed=0,
                               resamples=0)["spatial"]["auc"]
            entry["sites"][site] = {"shape": list(scored.maps[site].shape[1:]), "wall_s": time.perf_counter() - t,
                                    "cpu_s": time.process_time() - c, "auc": auc}
        record[name] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="unet")
    p.add_argument("--biases", default="spurious,none,contrast")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--minority-share", type=float, default=0.25)
    p.add_argument("--erm-epochs", type=int, default=20)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--permutations", type=int, default=10)
    p.add_argument("--results", type=Path, default=None, help="JSONL of raw results (default <out>/results.jsonl)")
    p.add_argument("--tables", type=Path, default=None, help="write <prefix>_summary.md, _per_seed.md, _probes.md")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--time-probe", type=Path, default=None, help="only time the spatial probe; write this JSON")
    a = p.parse_args(argv)
    if a.time_probe:
        _torch()
        print(json.dumps(time_probe(a, a.time_probe), indent=1))
        return
    results = a.results or a.out / "results.jsonl"
    if not a.summary_only:
        _torch()
        done = {(r["model"], r["bias"], r["seed"]) for r in _read(results)}
        for model in a.models.split(","):
            for bias in a.biases.split(","):
                for seed in a.seeds:
                    started = time.time()
                    groups, split = _data(a.out, a, bias, seed)
                    net, spec = _deployed(a.out, a, model, bias, seed, split, groups)
                    print(f"{model} {bias} seed {seed}: model ready ({time.time() - started:.0f} s)", flush=True)
                    if a.train_only or (model, bias, seed) in done:
                        continue
                    row = {"model": model, "bias": bias, "seed": seed, "strength": STRENGTH[bias], "n": a.n,
                           "size": a.size, "minority_share": a.minority_share, "erm_epochs": a.erm_epochs,
                           **_measure(net, spec, split, groups, seed, a)}
                    results.parent.mkdir(parents=True, exist_ok=True)
                    with results.open("a") as fh:
                        fh.write(json.dumps(row, default=float) + "\n")
                    print(f"  measured in {time.time() - started:.0f} s", flush=True)
    rows = _read(results)
    if rows:
        print(summary_table(rows))
        if a.tables:
            write_tables(rows, a.tables)


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


SITE_NAMES = {"model.0": "skip 1", "model.1.submodule.0": "skip 2", "model.1.submodule.1.submodule.0": "skip 3",
              "model.1.submodule.1.submodule.1.submodule": "bottleneck", "sam.image_encoder": "embedding"}


def _site(s: str) -> str:
    return SITE_NAMES.get(s, s)


def _ci(v: float, ci, scale: float = 1.0, signed: bool = False) -> str:
    f = "{:+.1f}" if signed and scale == 100 else ("{:+.3f}" if signed else ("{:.1f}" if scale == 100 else "{:.3f}"))
    return f.format(scale * v) + " [" + ", ".join(f.format(scale * c) for c in ci) + "]"


def _mean_t(values: list[float], scale: float = 1.0, digits: int = 3, signed: bool = False) -> str:
    """Mean ± 95% t-interval half-width over seeds."""
    x = scale * np.asarray(values, dtype=float)
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if len(x) < 2:
        return fmt.format(x.mean())
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"{fmt.format(x.mean())} ± {half:.{digits}f}"


def _verdict(u: dict) -> str:
    """`verdict` as `use_measure` writes it (derived from its fields for rows written before it had one)."""
    if "verdict" in u:
        return u["verdict"]
    low = u["worst_group_dice_change_ci"][0]
    return "not_used" if not u["used"] else ("used_gain" if low > 0 else "used_no_gain")


def per_seed_table(rows: list[dict]) -> str:
    """One row per (model, bias, seed, statistic): the gap, the use measure with CIs, the minority's Dice change."""
    head = ("| model | bias | seed | ERM gap M-F [95% CI] | statistic | output change [95% CI] | permuted groups "
            "(mean, max) | used | Dice change F [95% CI] | Dice change M [95% CI] | verdict |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        for st, u in r["use"].items():
            g = u["groups"]
            lines.append(f"| {r['model']} | {r['bias']} | {r['seed']} | {_ci(r['gap_signed'], r['gap_signed_ci'], 100)}"
                         f" | {st} | {_ci(u['output_change'], u['output_change_ci'])} | "
                         f"{u['null_output_change']:.3f}, {u['null_output_change_max']:.3f} | "
                         f"{'yes' if u['used'] else 'no'} | "
                         f"{_ci(g['F']['dice_change'], g['F']['dice_change_ci'], 100, True)} | "
                         f"{_ci(g['M']['dice_change'], g['M']['dice_change_ci'], 100, True)} | {_verdict(u)} |")
    return "\n".join(lines)


def probe_table(rows: list[dict]) -> str:
    """One row per (model, bias, seed, decoder input): the three probes' AUCs with CIs, and the spatial probe's
    time on the test split."""
    lines = ["| model | bias | seed | decoder input | role | logistic AUC | MLP AUC | spatial AUC | spatial probe s |",
             "|" + "---|" * 9]
    for r in rows:
        for site, e in r["leakage"].items():
            cells = [_ci(e[f"{pre}auc_before"], e[f"{pre}auc_before_ci"]) for pre in ("", "mlp_", "spatial_")]
            lines.append(f"| {r['model']} | {r['bias']} | {r['seed']} | {_site(site)} | {e['role']} | "
                         + " | ".join(cells) + f" | {r['probe_s'][f'{site}:spatial']:.1f} |")
    return "\n".join(lines)


def _per_site(u: dict) -> dict:
    out = {}
    for s, e in u.get("per_site", {}).items():
        out[f"site:{_site(s)}"], out[f"sitenull:{_site(s)}"] = e["output_change"], e["null_output_change"]
    return out


def summary_table(rows: list[dict]) -> str:
    """Mean ± 95% t-interval half-width over seeds, per model, bias and statistic (markdown)."""
    frame = pd.DataFrame([{"model": r["model"], "bias": r["bias"], "seed": r["seed"], "statistic": st,
                           "gap": r["gap_signed"], "change": u["output_change"], "null": u["null_output_change"],
                           "null_max": u["null_output_change_max"], "used": u["used"],
                           "dF": u["groups"]["F"]["dice_change"], "dM": u["groups"]["M"]["dice_change"],
                           "gain": _verdict(u) == "used_gain", **_per_site(u)}
                          for r in rows for st, u in r["use"].items()])
    sites = [c.split(":", 1)[1] for c in frame.columns if c.startswith("site:")]
    head = ("| model | bias | statistic | n | ERM gap M-F (points) | output change | permuted groups | used | "
            "Dice change F (points) | Dice change M (points) | verdict used_gain | per decoder input alone "
            "(output change / permuted) |")
    lines = [head, "|" + "---|" * 12]
    order = {"spurious": 0, "none": 1, "contrast": 2}
    for (model, bias, st), sub in sorted(frame.groupby(["model", "bias", "statistic"]),
                                         key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][2] != "map")):
        per_site = "; ".join(f"{s} {sub[f'site:{s}'].mean():.3f}/{sub[f'sitenull:{s}'].mean():.3f}" for s in sites
                             if f"site:{s}" in sub and sub[f"site:{s}"].notna().any())
        lines.append(f"| {model} | {bias} | {st} | {len(sub)} | {_mean_t(sub['gap'], 100, 1, True)} | "
                     f"{_mean_t(sub['change'])} | {_mean_t(sub['null'])} (max {sub['null_max'].max():.3f}) | "
                     f"{int(sub['used'].sum())}/{len(sub)} | {_mean_t(sub['dF'], 100, 1, True)} | "
                     f"{_mean_t(sub['dM'], 100, 1, True)} | {int(sub['gain'].sum())}/{len(sub)} | {per_site} |")
    return "\n".join(lines)


def write_tables(rows: list[dict], prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for name, text in (("summary", summary_table(rows)), ("per_seed", per_seed_table(rows)),
                       ("probes", probe_table(rows))):
        Path(f"{prefix}_{name}.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
