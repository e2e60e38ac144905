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
    return (f"{d['params_ratio']:.4f}, {_fmt(d.get('flops_ratio'), 4)}, {d['latency_ratio_b1']:.3f}, "
            f"{d['latency_ratio_b16']:.3f}")


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
    rows = []
    for name, inf in result.get("inference", {}).items():
        if "error" in inf:
            rows.append([name, "", "", "", "", "", "", "", "", inf["error"][:80]])
            continue
        b1, b16 = inf["latency_ms_b1"], inf["latency_ms_b16"]
        rows.append([f"{name} ({inf['image_size']} px{', tiny' if inf.get('tiny') else ''})",
                     f"{b1['deployed']:.2f} / {b1['mitigated']:.2f}", _fmt(inf["latency_ratio_b1"]),
                     f"{b16['deployed']:.1f} / {b16['mitigated']:.1f}", _fmt(inf["latency_ratio_b16"]),
                     f"{inf['perturber_params']:,} / {inf['deployed_params']:,}", _fmt(inf["params_ratio"], 4),
                     _fmt(inf.get("flops_ratio"), 4),
                     ", ".join(f"w{w}: {r:.4f}" for w, r in inf.get("params_ratio_by_width", {}).items()),
                     _small(inf.get("conv_w8"))])
    if "inference" in result:
        out.append(("Inference overhead (deployed / mitigated; ratio = mitigated / deployed)",
                    ["model", "ms b1", "ratio b1", "ms b16", "ratio b16", "params pert. / deployed", "params ratio",
                     "FLOPs ratio b1", "params ratio by perturber width", "conv w8: params, FLOPs, b1, b16 ratios"],
                    rows))
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
    met = result.get("met", {})
    targets = result.get("targets", {})
    rows = [[k, _fmt(result.get(k.replace("_aim", ""))), f"<= {targets.get(k)}",
             {True: "yes", False: "NO", None: "n/a"}[v]] for k, v in met.items()]
    if "mitigation" in result or "inference" in result:  # the targets are about these two
        out.append(("Targets", ["target", "measured", "goal", "met"], rows))
    return out


def markdown(result: dict, command: str) -> str:
    """bench.md: the machine, the command and every table."""
    m = result.get("machine", {})
    lines = [f"Command: `{command}`  ", f"Machine: {m.get('processor')}, {m.get('cores')} cores, "
             f"torch {m.get('torch')} ({m.get('torch_threads')} threads), GPU: {m.get('gpu') or 'none'}, "
             f"{m.get('platform')}  ",
             f"Date: {m.get('date')}; total {result.get('seconds')} s wall, {result.get('cpu_seconds')} s CPU; "
             f"load average at start {m.get('load_average')}", ""]
    for title, header, rows in tables(result):
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)
