"""bench.json as tables: the terminal output of `applefair bench` and bench.md share them."""

from __future__ import annotations


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _small(d: dict | None) -> str:
    if not d:
        return "n/a"
    return (f"{d['params_ratio']:.4f}, {_fmt(d.get('flops_ratio'), 4)}, {_fmt(d.get('latency_ratio_b1'))}, "
            f"{_fmt(d.get('latency_ratio_b16'))}")


def _ci(ratio: float | None, ci: list | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _latency_rows(inference: dict) -> list[list[str]]:
    rows = []
    for name, inf in inference.items():
        if "error" in inf:
            rows.append([name, *[""] * 9, inf["error"][:80]])
            continue
        b1, b16 = inf["latency_ms_b1"], inf["latency_ms_b16"]
        reps = "/".join(str(inf.get(f"latency_b{b}", {}).get("repeats", "?")) for b in (1, 16))
        rows.append([f"{name} ({inf['image_size']} px{', tiny' if inf.get('tiny') else ''})",
                     f"{b1['deployed']:.2f} / {b1['mitigated']:.2f}",
                     _ci(inf["latency_ratio_b1"], inf.get("latency_ratio_b1_ci95")),
                     f"{b16['deployed']:.1f} / {b16['mitigated']:.1f}",
                     _ci(inf["latency_ratio_b16"], inf.get("latency_ratio_b16_ci95")),
                     f"{inf.get('threads', '?')}, {reps}",
                     f"{inf['perturber_params']:,} / {inf['deployed_params']:,}", _fmt(inf["params_ratio"], 4),
                     _fmt(inf.get("flops_ratio"), 4),
                     ", ".join(f"w{w}: {r:.4f}" for w, r in inf.get("params_ratio_by_width", {}).items()),
                     _small(inf.get("conv_w8"))])
    return rows


LATENCY_HEADER = ["model", "ms b1", "ratio b1 [95% CI]", "ms b16", "ratio b16 [95% CI]", "threads, rounds b1/b16",
                  "params pert. / deployed", "params ratio", "FLOPs ratio b1", "params ratio by perturber width",
                  "conv w8: params, FLOPs, b1, b16 ratios"]


def _realistic(real: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for model, cost in real.get("mitigation", {}).items():
        if "summary" not in cost:
            out.append((f"Realistic mitigation cost: {model}", ["error"], [[cost.get("error", "did not run")]]))
            continue
        rows = []
        for name, s in cost["summary"].items():
            sec = s.get("seconds") or {}
            rows.append([name, _ci(sec.get("median"), sec.get("ci95")), _fmt(s.get("cpu_seconds"), 1),
                         _fmt(s.get("first_s"), 1), _fmt(s.get("epoch_s"), 1), _fmt(s.get("tail_s"), 2),
                         _fmt(s.get("projected_s_30"), 0), _fmt(s.get("peak_rss_delta_mb"), 0),
                         (s.get("error") or "")[:80]])
        build = cost.get("cache_build", {})
        title = (f"Realistic mitigation cost: {model} ({cost['deployed_params']:,} params, {cost['image_size']} px, "
                 f"{cost['images']['train']} train + {cost['images']['val']} val images, {cost['epochs']} epochs, "
                 f"batch {cost['batch_size']}, {cost['repeats']} interleaved rounds, {cost.get('threads')} thread(s)); "
                 f"cache build alone {_fmt(build.get('seconds'), 1)} s; APPLE / cheapest "
                 f"({cost.get('cheapest_baseline')}) measured {_ci(cost.get('ratio'), cost.get('ratio_ci95'))}; "
                 f"at 30 epochs (derived) "
                 f"{_fmt(cost.get('ratio_30_derived'))}")
        out.append((title, ["method", "wall s, median [95% CI]", "CPU s", "to end of epoch 1 s", "later epoch s",
                            "tail s", "30 epochs s (derived)", "peak +MB", "error"], rows))
    if real.get("inference"):
        out.append(("Realistic inference overhead (deployed / mitigated, wall ms; ratio = mitigated / deployed)",
                    LATENCY_HEADER, _latency_rows(real["inference"])))
    return out


def _cache(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    mem = result.get("cache_memory")
    if mem is not None:
        rows = [[_fmt(r.get("n")), r.get("store", ""), r.get("dtype", ""), _fmt(r.get("store_mb"), 0),
                 _fmt(r.get("build_s"), 2), _fmt(r.get("epoch_s"), 2), _fmt(r.get("peak_rss_delta_mb"), 0),
                 (r.get("error") or "")[:80]] for r in mem.get("rows", [])]
        out.append((f"Latent cache: peak memory vs data-set size (latent {mem.get('latent')})",
                    ["images", "store", "dtype", "store MB", "build s", "epoch s", "peak +MB (RssAnon)", "error"],
                    rows or [["", "", "", "", "", "", "", mem.get("error", "")]]))
    dt = result.get("cache_dtype")
    if dt is not None:
        rows = []
        for seed, r in dt.get("seeds", {}).items():
            for dtype in [k for k in r if k != "fp32"]:
                ch = r[dtype]["vs_fp32"]
                rows.append([seed, dtype, f"{r['fp32']['dice']:.4f} / {r[dtype]['dice']:.4f}",
                             _ci(ch["dice"]["diff"], ch["dice"]["ci95"]),
                             f"{r['fp32']['dice_gap']:.4f} / {r[dtype]['dice_gap']:.4f}",
                             _ci(ch["dice_gap"]["diff"], ch["dice_gap"]["ci95"]),
                             f"{r['fp32']['selected_epoch']} / {r[dtype]['selected_epoch']}"])
        out.append((f"Latent cache dtype: APPLE's selected patch, half-precision cache vs fp32 ({dt.get('benchmark')}, "
                    f"{dt.get('model')}, {dt.get('epochs')} epochs)",
                    ["seed", "dtype", "test Dice fp32 / this", "change [95% CI]", "Dice gap fp32 / this",
                     "change [95% CI]", "selected epoch"], rows or [["", "", "", "", "", "", dt.get("error", "")]]))
    return out


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the terminal output and bench.md."""
    out = []
    for model, cost in result.get("mitigation", {}).items():
        if "runs" not in cost:
            out.append((f"Mitigation cost: {model}", ["error"], [[cost.get("error", "did not run")]]))
            continue
        rows = []
        for name, run in cost["runs"].items():
            rows.append([name, _fmt(run.get("seconds"), 2), _fmt(run.get("cpu_seconds"), 2),
                         _fmt(run.get("peak_rss_mb"), 0), _fmt(run.get("peak_rss_delta_mb"), 0),
                         _fmt(run.get("trainable_params")), run.get("error", "")[:80]])
        title = (f"Mitigation cost: {model}{' (tiny)' if cost.get('tiny') else ''}, "
                 f"{cost['deployed_params']:,} params, {cost['images']['train']} train images at {cost['size']} px, "
                 f"{cost['epochs']} epochs; cheapest retraining baseline: {cost.get('cheapest_baseline')}; "
                 f"APPLE / cheapest (wall, CPU): cached {_fmt(cost.get('ratio'))}, {_fmt(cost.get('ratio_cpu'))}; "
                 f"uncached {_fmt(cost.get('ratio_uncached'))}, {_fmt(cost.get('ratio_uncached_cpu'))}")
        out.append((title, ["method", "wall s", "CPU s", "peak MB", "peak +MB", "trainable params", "error"], rows))
    if "inference" in result:
        out.append(("Inference overhead (deployed / mitigated, wall ms; ratio = mitigated / deployed)",
                    LATENCY_HEADER, _latency_rows(result["inference"])))
    scal = result.get("scaling", {})
    for key, label in (("dataset_size", "data-set size (64 px)"), ("image_size", "image size")):
        rows = [[_fmt(r.get("n")), _fmt(r.get("image_size")), r.get("cache", ""), _fmt(r.get("s_per_epoch"), 2),
                 _fmt(r.get("until_first_epoch_s"), 2),
                 _fmt(r.get("peak_rss_mb"), 0), _fmt(r.get("peak_rss_delta_mb"), 0), r.get("error", "")[:80]]
                for r in scal.get(key, [])]
        if not rows:  # not measured (`--only`)
            continue
        out.append((f"APPLE seconds per epoch vs {label}",
                    ["images", "px", "cache", "s/epoch", "s to 1st epoch", "peak MB", "peak +MB", "error"], rows))
    ev = result.get("evaluation")
    if ev is not None:
        out.append(("Evaluation throughput (seconds per 1,000 images, inference + metrics)",
                    ["images", "px", "Dice+IoU", "Dice+IoU+HD95", "error"],
                    [[_fmt(ev.get("n")), _fmt(ev.get("image_size")), _fmt(ev.get("s_per_1000_dice_iou"), 2),
                      _fmt(ev.get("s_per_1000_dice_iou_hd95"), 2), ev.get("error", "")[:80]]]))
    if "realistic" in result:
        out += _realistic(result["realistic"])
    out += _cache(result)
    met = result.get("met", {})
    targets = {**result.get("targets", {}), **result.get("realistic_targets", {})}
    rows = [[k, _fmt(_measured(result, k)), f"<= {targets.get(_target_key(k))}",
             {True: "yes", False: "NO", None: "n/a"}[v]] for k, v in met.items()]
    if "mitigation" in result or "inference" in result or "realistic" in result:  # what the targets are about
        out.append(("Targets", ["target", "measured", "goal", "met"], rows))
    return out


def _target_key(key: str) -> str:
    return key.split(":")[0].removeprefix("realistic_") if ":" in key else key


def _measured(result: dict, key: str):
    if ":" not in key:
        return result.get(key.replace("_aim", ""))
    name, model = key.split(":", 1)
    real = result.get("realistic", {})
    field_ = name.removeprefix("realistic_")
    if field_.startswith("cost_ratio"):
        return real.get("mitigation", {}).get(model, {}).get(field_.removeprefix("cost_"))
    return real.get("inference", {}).get(model, {}).get(field_)


def markdown(result: dict, command: str) -> str:
    """bench.md: the machine, the command and every table."""
    m = result.get("machine", {})
    lines = [f"Command: `{command}`  ", f"Machine: {m.get('processor')}, {m.get('cores')} cores, "
             f"torch {m.get('torch')} ({m.get('torch_threads')} threads), GPU: {m.get('gpu') or 'none'}, "
             f"{m.get('platform')}  ",
             f"Date: {m.get('date')}; total {result.get('seconds')} s wall, {result.get('cpu_seconds')} s CPU; "
             f"torch threads fixed at {result.get('threads')}; load average at start {m.get('load_average')}, at end "
             f"{result.get('machine_after', {}).get('load_average')}", ""]
    for title, header, rows in tables(result):
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)
