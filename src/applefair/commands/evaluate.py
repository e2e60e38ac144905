"""`applefair evaluate` (one model, optionally patched) and `applefair aggregate-seeds` (runs across seeds)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out_console = Console()


def evaluate(
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    data: Path = typer.Option(None, "--data", help="Dataset: a manifest CSV or a dataset folder (see --format)."),
    model: Path = typer.Option(None, "--model", help="Deployed model folder (model.yaml + model.safetensors)."),
    patch: Path | None = typer.Option(None, "--patch", help="Fairness patch (patch.safetensors) to attach."),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="Refuse a patch fitted to other weights than "
                                                                   "--model's (default); --no-strict warns."),
    attribute: list[str] = typer.Option(None, "--attribute", "-a",
                                        help="Sensitive attribute (a group spec such as 'sex' or 'age:0,60,inf'); "
                                             "give it twice to evaluate the intersection."),
    groups: str | None = typer.Option(None, "--groups",
                                      help="Full group spec ('sex=F,M', 'sex*age:0,60,inf') or a YAML file; "
                                           "replaces --attribute."),
    split: str = typer.Option(None, "--split", help="Split to evaluate: train, val or test (default: test)."),
    data_format: str = typer.Option(None, "--format", help="Dataset format (csv, fairseg, tusc, fives, nifti); "
                                                           "detected when omitted."),
    option: list[str] = typer.Option([], "--option", help="Reader option KEY=VALUE (repeatable)."),
    size: int = typer.Option(None, "--size", help="Resize every sample to SIZE x SIZE (as in training)."),
    metrics: str = typer.Option(None, "--metrics", help="Per-sample metrics, comma-separated "
                                                        "(default: dice,iou,hd95,nsd)."),
    convention: str = typer.Option(None, "--convention", help="Metric convention: applefair, fairseg or fairmedfm "
                                                              "(empty masks, HD95, NSD tolerance, missing groups; "
                                                              "default applefair, see docs/metrics.md)."),
    nsd_tolerance: float = typer.Option(None, "--nsd-tolerance", help="Surface-Dice tolerance in pixels (default: the "
                                                                      "convention's, 2 for applefair, 5 for fairseg)."),
    save_predictions: bool = typer.Option(None, "--save-predictions/--no-save-predictions",
                                          help="Write every predicted mask (PNG, named by sample id) under "
                                               "predictions/, so a peer's own scoring code can run on them."),
    bootstrap: int = typer.Option(None, "--bootstrap", help="Bootstrap resamples for CIs; 0: no CIs (default 1000)."),
    level: float = typer.Option(None, "--level", help="Confidence level of the intervals (default 0.95)."),
    leakage: bool = typer.Option(None, "--leakage/--no-leakage", help="Fit fresh probes on the latents (default on)."),
    probe: str = typer.Option(None, "--probe", help="Where to probe and measure use: 'decoder' (every input the "
                                                    "decoder receives: skips, bottleneck, patched sites; default) "
                                                    "or 'patched' (the patched site(s) only)."),
    use: bool = typer.Option(None, "--use/--no-use", help="Measure whether the output depends on the group "
                                                          "statistics of the decoder's inputs (use.json; default on)."),
    use_statistic: str = typer.Option(None, "--use-statistic", help="What the use measure moves: 'map' (mean latent "
                                                                    "map + channel spread; default) or 'channel'."),
    use_permutations: int = typer.Option(None, "--use-permutations", help="Group relabelings that give the use "
                                                                          "measure's null level (default 10)."),
    folds: int = typer.Option(None, "--folds", help="Cross-validation folds of the leakage probes (default 5)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the bootstrap and the probes (default 0)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per forward pass (default 32)."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda (default auto)."),
    config: Path = typer.Option(None, "--config", help="YAML settings (keys as the long options, with _ for -); "
                                                       "options given here override the file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Evaluate a deployed model (and its fairness patch) per group, with CIs and attribute leakage.

    Writes metrics.json, per_sample.csv, leakage.json (three fresh probes at every decoder input) and
    use.json (does the output depend on the group?); with --patch also deployed/ (the model without
    the patch), paired.json (change after - before with paired CIs and Wilcoxon tests) and
    frozen_check.json.

    Example: applefair evaluate --data data/ --model deployed/ --patch patch.safetensors --attribute sex --out eval/
    """
    from applefair.data.formats import parse_options
    from applefair.engine.config import resolve_settings
    from applefair.workflows.evaluate import EvaluateSettings, run_evaluation

    st = resolve_settings(EvaluateSettings, config, data=_str(data), model=_str(model), patch=_str(patch),
                          attribute=attribute or None, groups=groups, split=split, format=data_format or None,
                          size=size, metrics=metrics, convention=convention, nsd_tolerance=nsd_tolerance,
                          save_predictions=save_predictions, strict=strict, bootstrap=bootstrap, level=level,
                          leakage=leakage, probe=probe, use=use, use_statistic=use_statistic,
                          use_permutations=use_permutations, folds=folds, seed=seed, batch_size=batch_size,
                          device=device)
    st.options = {**st.options, **parse_options(option)}
    result = run_evaluation(st, out, overwrite=overwrite, quiet=quiet)
    for note in result.warnings:
        out_console.print(f"[yellow]warning:[/yellow] {escape(note)}", highlight=False)
    _print_summary(result)
    out_console.print(f"Wrote {out}/metrics.json, per_sample.csv" + (", leakage.json" if st.leakage else "")
                      + (", use.json" if result.evaluation.use is not None else "")
                      + (", paired.json" if st.patch else ""))


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _fmt(v, ci=None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    text = f"{v:.{digits}f}"
    if ci and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def _print_summary(result) -> None:
    m = result.metrics
    paired = result.evaluation.paired
    ci = m.get("ci", {})
    level = f"{100 * ci['level']:.0f}% CI" if ci else "no CI"
    table = Table(title=f"Test metrics by group, attribute '{m['attribute']}' ({level})")
    for col in ("group", "n", "Dice", "IoU"):
        table.add_column(col, justify="left" if col == "group" else "right")
    rows = [("overall", m["overall"], ci.get("overall", {}))]
    rows += [(g, v, ci.get("groups", {}).get(g, {})) for g, v in m["groups"].items()]
    for name, v, c in rows:
        table.add_row(name, str(v["n"]), _fmt(v.get("dice"), c.get("dice")), _fmt(v.get("iou"), c.get("iou")))
    out_console.print(table)
    fair = Table(title="Fairness (Dice)")
    fair.add_column("metric")
    fair.add_column("value", justify="right")
    if paired is not None:
        fair.add_column("change vs deployed", justify="right")
    for key in ("dice_delta", "dice_worst", "dice_skewness", "dice_std", "es_dice_sum", "es_dice_std"):
        if key not in m["fairness"]:
            continue
        cells = [key, _fmt(m["fairness"][key], ci.get("fairness", {}).get(key))]
        if paired is not None:
            p = paired["fairness"].get(key, {})
            cells.append(_fmt(p.get("diff"), p.get("ci")) + (" *" if p.get("excludes_zero") else ""))
        fair.add_row(*cells)
    out_console.print(fair)
    print_leakage(result.evaluation.leakage)
    print_use(result.evaluation.use)
    if paired is not None:
        from applefair.metrics.outcome import classify_outcome

        out_console.print(classify_outcome(paired, result.evaluation.leakage, result.evaluation.use).sentence,
                          highlight=False)


PROBE_COLUMNS = (("", "logistic"), ("mlp_", "MLP"), ("spatial_", "spatial"))


def _auc_cell(v: dict, pre: str) -> str:
    """'0.98 -> 0.71 [0.60, 0.80]' for a patched model (the interval of what the decoder now receives), else
    '0.98 [0.95, 1.00]'."""
    if f"{pre}auc_after" in v:
        return (f"{_fmt(v.get(f'{pre}auc_before'), None, 2)} -> "
                f"{_fmt(v.get(f'{pre}auc_after'), v.get(f'{pre}auc_after_ci'), 2)}")
    key = f"{pre}auc_before" if f"{pre}auc_before" in v else f"{pre}auc"
    return _fmt(v.get(key), v.get(f"{key}_ci"), 2) if key in v else ""


def print_leakage(leakage: dict | None, console: Console | None = None) -> None:
    """One row per decoder input: its role and the three fresh probes' AUCs (before -> after when patched)."""
    if not leakage:
        return
    patched = any("auc_after" in v for v in leakage.values())
    table = Table(title="Attribute leakage: fresh-probe AUC per decoder input" + (" (before -> after)" if patched
                                                                                   else "") + " (95% CI)")
    for col in ("decoder input", "role", *(name for _, name in PROBE_COLUMNS)):
        table.add_column(col, justify="left" if col in ("decoder input", "role") else "right")
    for site, v in leakage.items():
        table.add_row(escape(site), str(v.get("role", "")), *(_auc_cell(v, pre) for pre, _ in PROBE_COLUMNS))
    (console or out_console).print(table)


def print_use(use: dict | None, console: Console | None = None) -> None:
    """One line per model: the use measure (use.json)."""
    from applefair.report.summary import use_sentence

    for label, entry in (use or {}).items():
        line = use_sentence(label, entry)
        if line:
            (console or out_console).print(escape(line), highlight=False)


def aggregate_seeds_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders of the same evaluation with different seeds."),
    out: Path = typer.Option(..., "--out", help="JSON file to write (mean ± std per number, markers)."),
) -> None:
    """Mean ± std across seeds of every metric, and a '*' where a paired change is significant across seeds.

    Reads metrics.json (and paired.json when present) in each run folder. A change is marked when
    the t-interval of its mean across seeds excludes zero.

    Example: applefair aggregate-seeds runs/eval-s0 runs/eval-s1 runs/eval-s2 --out runs/seeds.json
    """
    from applefair.workflows.aggregate import aggregate_runs

    result = aggregate_runs(runs, out)
    table = Table(title=f"Across {len(runs)} runs (mean ± std)")
    for col in ("metric", "value", "change vs deployed"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, v in result["metrics"].get("fairness", {}).items():
        if not key.startswith(("dice", "es_dice")):
            continue
        ch = result.get("paired", {}).get("fairness", {}).get(key)
        change = f"{ch['text']}" if ch else ""
        table.add_row(key, v["text"], change)
    out_console.print(table)
    out_console.print(f"Wrote {out}")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command("aggregate-seeds")(aggregate_seeds_cmd)
