"""From a run folder to report.html, report.md, tables/*.csv and plots/*.

`write_reports(run_dir)` is what every command calls at its end and what
`applefair report RUN_DIR` calls later; sections whose files are missing are left out.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
from pathlib import Path

import pandas as pd

from applefair._version import __version__
from applefair.engine import runfolder as rf
from applefair.engine.io import atomic_path, write_csv, write_text
from applefair.errors import InputError
from applefair.metrics.outcome import restarts_sentence
from applefair.report import plots
from applefair.report.cases import case_sections
from applefair.report.document import Paragraph, Section, Table, format_cell
from applefair.report.render import render_html, render_markdown
from applefair.report.rundata import RunData, load_run
from applefair.report.summary import summarize
from applefair.report.tables import (
    COMPARE_KEYS,
    comparison_table,
    config_rows,
    data_summary,
    evaluation_table,
    leakage_table,
    split_counts,
    use_table,
)

log = logging.getLogger("applefair")

TABLE_NAMES = ("cases", "results", "data_summary", "leakage", "use", "comparison", "history", "frozen_check", "config")
PLOT_NAMES = ("group_dice", "dice_distribution", "tradeoff", "training_curves", "overlays")


def _with_ci(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Display copy of the evaluation table: 'value [low, high]' cells, no key/group columns."""
    shown = pd.DataFrame({"metric": frame["metric"]})
    for lab in labels:
        cells = []
        for _, r in frame.iterrows():
            text = format_cell(r[lab])
            lo, hi = r.get(f"{lab}_ci_low"), r.get(f"{lab}_ci_high")
            if lo is not None and hi is not None and lo == lo and hi == hi:
                text += f" [{lo:.4f}, {hi:.4f}]"
            cells.append(text)
        shown[lab] = cells
    if "change" in frame.columns:
        lo = frame["change_ci_low"] if "change_ci_low" in frame.columns else [math.nan] * len(frame)
        hi = frame["change_ci_high"] if "change_ci_high" in frame.columns else [math.nan] * len(frame)
        shown["change"] = [(f"{v:+.4f}" if v == v else "") + (f" [{a:+.4f}, {b:+.4f}]" if a == a and b == b else "")
                           for v, a, b in zip(frame["change"], lo, hi, strict=True)]
    return shown


def _results(run: RunData) -> Section | None:
    if not run.evaluations:
        return None
    sec = Section("results", "Results on the test split")
    labels = [e.label for e in run.evaluations]
    frame = evaluation_table(run.evaluations, run.paired if len(run.evaluations) == 2 else None)
    has_ci = any(c.endswith("_ci_low") for c in frame.columns)
    paired = "change_ci_low" in frame.columns
    cap = " vs ".join(labels) + (" (95% CI in brackets" + ("; the change's CI from a paired bootstrap)" if paired
                                                           else ")") if has_ci else
                                 "; single run, metrics.json has no confidence intervals")
    sec.add(Table("results", frame, caption=cap, display=_with_ci(frame, labels)))
    sec.add(plots.group_dice_plot(run.evaluations))
    dist = plots.distribution_plot(run.evaluations)
    if dist is not None:
        sec.add(dist)
    return sec


def _leakage(run: RunData) -> Section | None:
    table = leakage_table(run.leakage or {})
    if table is None:
        return None
    sec = Section("leakage", "Attribute leakage (fresh probes)")
    sec.text("New probes, never the discriminator used in training, are cross-validated on the test split to "
             "predict the group from each input the decoder receives (every skip, the bottleneck, the perturbed "
             "site; f_o before, f_p after): a logistic regression and a small MLP on the pooled latent "
             "(per-channel mean and std), and a small conv net on the latent map (spatial), which also reads cues "
             "tied to positions. AUC 0.5 means no information, 1.0 means fully readable.")
    return sec.add(Table("leakage", table[0], caption="ROC AUC per decoder input (mlp_ and spatial_ keys: those "
                         "probes; 95% CI in brackets where leakage.json has one)", digits=3, display=table[1]))


def _use(run: RunData) -> Section | None:
    table = use_table(run.use or {})
    if table is None:
        return None
    sec = Section("use", "Use of the group by the decoder (counterfactual)")
    sec.text("Presence is not use. Each test image's decoder inputs are moved to another group's statistics "
             "(mean latent map and per-channel spread, at every decoder input at once, before any perturber) and "
             "the decoder is run again. Output change = 1 - Dice between the new and the original masks; the same "
             "with the group labels permuted gives the level that sampling noise alone produces. 'Used' means the "
             "lower CI bound lies above every permuted value. The Dice change against the truth says whether a "
             "group's prediction gets better with the other groups' statistics: a misused cue shows a gain for the "
             "worst-off group, missing information does not.")
    return sec.add(Table("use", table[0], caption="Use measure per model (95% CIs in brackets)", display=table[1]))


def _comparison(run: RunData) -> tuple[Section | None, pd.DataFrame | None]:
    if run.comparison is None:
        return None, None
    agg = comparison_table(run.comparison)
    keys = [k for k in COMPARE_KEYS if k in agg.columns]
    sec = Section("comparison", "Comparison of methods")
    sec.text(f"Read from {run.comparison_path.relative_to(run.root) if run.comparison_path else 'a results table'}"
             f"; values are means over the {int(agg['runs'].max())} run(s) per method and cell at most.")
    sec.add(Table("comparison", agg, caption="Methods (pareto = on the utility-fairness Pareto front of its cell)"))
    fig = plots.tradeoff_plot(agg, keys)
    if fig is not None:
        sec.add(fig)
    return sec, agg


def _training(run: RunData) -> Section | None:
    if run.history is None or not len(run.history):
        return None
    sec = Section("training", "Training curves")
    fig = plots.history_plot(run.history)
    if fig is not None:
        sec.add(fig)
    return sec.add(Table("history", run.history, caption="Per epoch (epoch 0: the unchanged model on validation)"))


def _overlays(run: RunData, enabled: bool) -> Section | None:
    if not run.evaluations:
        return None
    sec = Section("overlays", "Example overlays")
    if not enabled:
        return sec.text("Example overlays were not requested (--no-overlays).", "note")
    from applefair.report.overlays import compute_overlays

    try:
        cases, why = compute_overlays(run)
    except Exception as exc:  # noqa: BLE001 - a broken model must not cost the whole report
        log.warning("overlays failed: %s", exc, exc_info=True)
        cases, why = None, f"Example overlays skipped: predictions failed ({type(exc).__name__}: {exc})."
    if cases is None:
        return sec.text(why, "note")
    return sec.add(plots.overlay_grid(cases))


def _frozen(run: RunData) -> Section | None:
    if not run.frozen:
        return None
    rows = [(k, "yes" if v is True else ("NO" if v is False else ", ".join(map(str, v)) if isinstance(v, list)
                                       else str(v))) for k, v in run.frozen.items() if k != "restarts"]
    sec = Section("frozen", "Frozen-weights check")
    sec.text("SHA-256 over every parameter and buffer of the deployed segmentor, before and after mitigation: "
             "equal hashes prove that not a single weight changed.")
    games = restarts_sentence(run.frozen)
    if games:
        sec.text(games)
    return sec.add(Table("frozen_check", pd.DataFrame(rows, columns=["check", "value"])))


def _data(run: RunData) -> Section | None:
    if run.manifest is None:
        return None
    sec = Section("data", "Data")
    where = run.manifest_path.relative_to(run.root) if run.manifest_path.is_relative_to(run.root) \
        else run.manifest_path
    attr = run.attribute
    groups = list(run.evaluations[0].metrics["groups"]) if run.evaluations else []
    table = data_summary(run.manifest, attr, groups)
    if table is None:
        sec.text(f"Images per split in {where}" + (f" (column '{attr}' is not in the manifest)." if attr else "."))
        return sec.add(Table("data_summary", split_counts(run.manifest)))
    unknown = int(table.loc[table["split"] == "all", "unknown"].iloc[0]) if "unknown" in table.columns else 0
    sec.text(f"Images per split and {attr} group in {where}. " + (
        f"{unknown} image(s) have an unknown {attr}: they count in overall metrics and are excluded from group "
        "metrics and from every group-aware loss." if unknown else f"Every image has a known {attr}."))
    return sec.add(Table("data_summary", table, caption=f"split x {attr}"))


def _config(run: RunData) -> Section | None:
    if not run.config:
        return None
    rows = config_rows(run.config)
    sec = Section("config", "Configuration")
    return sec.add(Table("config", pd.DataFrame(rows, columns=["key", "value"]), csv=False))


def _notes(run: RunData) -> Section:
    sec = Section("notes", "Definitions")
    sec.text("Dice gap = max minus min of group mean Dice; skewness = (1 - min) / (1 - max); "
             "ES-Dice (Harvard-FairSeg, sum form) = Dice / (1 + sum over groups of |Dice - Dice_k|); "
             "ES-Dice (FairMedFM, std form) = Dice / (1 + population std of group means). Overall Dice includes "
             "images with an unknown attribute; group metrics exclude them.")
    sec.text("Files read: " + ", ".join(sorted(p.relative_to(run.root).as_posix() for p in _inputs(run))) + ".",
             "note")
    return sec


def _inputs(run: RunData) -> list[Path]:
    names = [rf.CONFIG, rf.METRICS, rf.PER_SAMPLE, rf.LEAKAGE, rf.USE, rf.FROZEN_CHECK, rf.HISTORY, rf.PAIRED, rf.PATCH]
    found = [run.root / n for n in names if (run.root / n).is_file()]
    found += [run.root / e.label / f for e in run.evaluations for f in (rf.METRICS, rf.PER_SAMPLE)
              if (run.root / e.label / f).is_file()]
    for p in (run.manifest_path, run.comparison_path):
        if p is not None and p.is_relative_to(run.root):
            found.append(p)
    return found


def _guarded(sid: str, title: str, make, *args) -> tuple[object, Section | None]:
    """(result, None), or (None, a note section) when the builder fails unexpectedly.

    Why: a bug in one plot must not cost the whole report of a long run; bad input still stops it.
    """
    try:
        return make(*args), None
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("report section %s failed: %s", sid, exc, exc_info=True)
        return None, Section(sid, title).text(f"This section could not be drawn ({type(exc).__name__}: {exc}); "
                                              "the run log has the traceback.", "note")


def build_sections(run: RunData, overlays: bool = True) -> list[Section]:
    """Every section the run folder has the files for, in reading order."""
    made, failed = _guarded("comparison", "Comparison of methods", _comparison, run)
    comparison, agg = made if made is not None else (failed, None)
    summary = Section("summary", "Summary")
    sentences, failed_summary = _guarded("summary", "Summary", summarize, run, agg)
    for sentence in sentences or []:
        summary.add(Paragraph(sentence, "summary"))
    if failed_summary is not None:
        summary = failed_summary
    elif not summary.blocks:
        summary.text("This run folder holds no metrics, comparison or training history to summarise.", "note")
    parts: list[Section | None] = [summary]
    for sid, title, make, args in (("results", "Results on the test split", _results, (run,)),
                                   ("leakage", "Attribute leakage (fresh probes)", _leakage, (run,)),
                                   ("use", "Use of the group by the decoder (counterfactual)", _use, (run,)),
                                   ("comparison", "", None, ()),
                                   ("training", "Training curves", _training, (run,)),
                                   ("overlays", "Example overlays", _overlays, (run, overlays)),
                                   ("frozen", "Frozen-weights check", _frozen, (run,)),
                                   ("data", "Data", _data, (run,)), ("config", "Configuration", _config, (run,)),
                                   ("notes", "Definitions", _notes, (run,))):
        if make is None:
            parts.append(comparison)
            continue
        section, failed = _guarded(sid, title, make, *args)
        parts.append(section if failed is None else failed)
    return [s for s in parts if s is not None]


def _run_name(run_dir: Path) -> str:
    """The run folder's name, also while it is still being built as `.NAME.xxxx.partial` (io.staged_dir)."""
    name = run_dir.resolve().name
    staged = re.match(r"^\.(.+)\.[^.]+\.partial$", name)
    return staged.group(1) if staged else name


def write_reports(run_dir: str | os.PathLike, overlays: bool = True) -> dict[str, Path]:
    """Write report.html, report.md, tables/*.csv and plots/* into `run_dir`; returns their paths."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    cases = rf.read_cases(run_dir)
    if cases:  # a run of several cases (demo): their side-by-side page, then this folder's configuration
        config, failed = _guarded("config", "Configuration", _config, run)
        sections = case_sections(run_dir, cases) + [s for s in (failed or config,) if s is not None]
    else:
        sections = build_sections(run, overlays)
    command = (run.config or {}).get("command", "")
    title = f"applefair report: {_run_name(run_dir)}"
    subtitle = (f"{command + ' run, ' if command else ''}generated "
                f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by applefair {__version__}")
    written: dict[str, Path] = {}
    tables_dir, plots_dir = run_dir / rf.TABLES, run_dir / rf.PLOTS
    for sec in sections:
        for b in sec.blocks:
            if isinstance(b, Table) and b.csv:
                written[f"tables/{b.name}.csv"] = tables_dir / f"{b.name}.csv"
                write_csv(tables_dir / f"{b.name}.csv", b.frame)
            elif isinstance(b, plots.Figure):
                path = plots_dir / f"{b.name}{b.suffix}"
                with atomic_path(path) as tmp:
                    tmp.write_bytes(b.data)
                written[f"plots/{path.name}"] = path
    for folder, names, suffixes in ((tables_dir, TABLE_NAMES, (".csv",)), (plots_dir, PLOT_NAMES, (".svg", ".png"))):
        for name in names:  # drop what an earlier report wrote and this one did not
            for suffix in suffixes:
                stale = folder / f"{name}{suffix}"
                if stale.is_file() and f"{folder.name}/{stale.name}" not in written:
                    stale.unlink()
    write_text(run_dir / rf.REPORT_HTML, render_html(title, subtitle, sections))
    write_text(run_dir / rf.REPORT_MD, render_markdown(title, subtitle, sections))
    written[rf.REPORT_HTML], written[rf.REPORT_MD] = run_dir / rf.REPORT_HTML, run_dir / rf.REPORT_MD
    log.info("report written: %s", run_dir / rf.REPORT_HTML)
    return written
