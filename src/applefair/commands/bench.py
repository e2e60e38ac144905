"""`applefair bench`: APPLE's cost against retraining, inference overhead, scaling, evaluation speed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from applefair.config import Settings

out_console = Console()


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


def _csv(text: str | None, option: str, kind: type) -> list | None:
    """'a,b,c' as a list of `kind` (None when the option was not given)."""
    if text is None:
        return None
    from applefair.errors import InputError

    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{option} {text}: expected comma-separated {kind.__name__} values") from None


class BenchSettings(Settings):
    """Settings of `applefair bench` (YAML keys for --config)."""

    quick: bool = False
    seed: int = 0
    device: str = "auto"
    only: list[str] | None = None  # sections to measure (default: all)
    dataset_sizes: list[int] | None = None  # data-set sizes of the scaling rows (default 1k/4k/16k; quick smaller)


def bench(
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for bench.json and bench.md."),
    quick: bool = typer.Option(None, "--quick/--full", help="Small sizes, about 1.5-3 minutes on 2 cores "
                                                            "(default: full)."),
    seed: int = typer.Option(None, "--seed", help="Seed for data and models (default 0)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (quick, seed); options given here override "
                                                       "the file."),
    device: str = typer.Option(None, "--device", help="auto (a GPU when there is one), cpu, cuda or cuda:N "
                                                       "(default auto)."),
    only: str = typer.Option(None, "--only", help="Comma-separated sections to measure: mitigation, inference, "
                                                  "dataset_size, image_size, evaluation (default: all)."),
    sizes: str = typer.Option(None, "--sizes", help="Comma-separated data-set sizes of the scaling rows "
                                                    "(default 1000,4000,16000; quick 256,512,1024)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Measure APPLE's cost against retraining baselines, its inference overhead, scaling and evaluation speed.

    Writes bench.json (mitigation_cost_ratio, inference_latency_ratio, params_ratio, scaling,
    evaluation) and bench.md (the same as tables). A benchmark, not a test: numbers depend on the machine.

    Example: applefair bench --quick --out runs/bench-quick

    Example: applefair bench --only dataset_size --sizes 4000,16000 --out runs/bench-scaling
    """
    import sys

    from applefair.errors import InputError
    from applefair.io import write_json, write_text
    from applefair.perf import SECTIONS, BenchConfig, run_bench
    from applefair.progress import console
    from applefair.speed import resolve_device

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder (expected an output folder for bench.json)")
    from applefair.config import resolve_settings

    st = resolve_settings(BenchSettings, config, quick=quick, seed=seed, device=device,
                          only=_csv(only, "--only", str), dataset_sizes=_csv(sizes, "--sizes", int))
    quick, seed = st.quick, st.seed
    cfg = BenchConfig.quick(seed=seed) if quick else BenchConfig(seed=seed)
    cfg.device = str(resolve_device(st.device))
    if st.only:
        bad = sorted(set(st.only) - set(SECTIONS))
        if bad:
            raise InputError(f"--only {','.join(st.only)}: unknown section(s) {', '.join(bad)} "
                             f"(expected some of {', '.join(SECTIONS)})")
        cfg.sections = tuple(st.only)
    if st.dataset_sizes:
        if min(st.dataset_sizes) < 2:
            raise InputError(f"--sizes {st.dataset_sizes}: expected data-set sizes of at least 2 images")
        cfg.dataset_sizes = tuple(st.dataset_sizes)

    def step(label: str) -> None:
        if not quiet:
            console.print(f"[bold]bench:[/bold] {label}")

    result = run_bench(cfg, quiet=True, step=step)
    command = "applefair " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("applefair") \
        else f"applefair bench{' --quick' if quick else ''} --out {out}"
    result["command"] = command
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", markdown(result, command))
    for title, header, rows in tables(result):
        table = Table(title=title, title_justify="left")
        for h in header:
            table.add_column(h)
        for row in rows:
            table.add_row(*[str(c) for c in row])
        out_console.print(table)
    out_console.print(f"bench.json and bench.md written to {out} ({result['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command()(bench)
