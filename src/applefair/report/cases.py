"""The side-by-side report of a run with several cases (`applefair demo`): one row and two sentences per case.

Each case folder has its own full report; this page says, for each case, which kind of gap the deployed
model has (its use measure) and what the patch did about it (the outcome), with the numbers beside them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from applefair.engine import runfolder as rf
from applefair.metrics.outcome import explain_use
from applefair.report.document import Paragraph, Section, Table


def _pts(v: object) -> float:
    return 100 * float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def case_rows(cases: dict[str, dict]) -> pd.DataFrame:
    """One row per case: the benchmark, Dice and gap before/after (points), the gap change's CI, the verdicts."""
    rows = []
    for name, c in cases.items():
        ci = c.get("gap_change_ci") or [None, None]
        rows.append({"case": name, "seed": c.get("seed"), "bias": c.get("bias"),
                     "dice_before": _pts(c.get("dice_before")), "dice_after": _pts(c.get("dice_after")),
                     "gap_before": _pts(c.get("gap_before")),
                     "gap_after": _pts(c.get("gap_after")), "gap_change_ci_low": _pts(ci[0]),
                     "gap_change_ci_high": _pts(ci[1]), "use_deployed": (c.get("use") or {}).get("verdict"),
                     "use_patched": (c.get("use_patched") or {}).get("verdict"), "outcome": c.get("outcome"),
                     "selected_epoch": c.get("selected_epoch"), "weights_unchanged": c.get("unchanged"),
                     "seconds": c.get("seconds")})
    return pd.DataFrame(rows)


def case_sentence(name: str, case: dict) -> str:
    """The case's title, what the use measure says about the deployed model, then what the patch did."""
    parts = [f"{case.get('title') or name} ({name}/).", explain_use(case.get("use")), case.get("outcome_sentence")]
    return " ".join(p for p in parts if p)


def seed_sentences(cases: dict[str, dict]) -> list[str]:
    """One sentence per case run with several seeds: the share of the gap closed by each seed, and in how many
    seeds it closed (paired CI below zero) and by at least half. One seed is one draw; this is their spread."""
    by_case: dict[str, list[dict]] = {}
    for name, c in cases.items():
        by_case.setdefault(str(c.get("case") or name), []).append(c)
    out = []
    for name, runs in by_case.items():
        if len(runs) < 2:
            continue
        shares = [100 * (1 - _pts(c.get("gap_after")) / _pts(c.get("gap_before"))) if _pts(c.get("gap_before")) > 0
                  else math.nan for c in runs]
        closed = [c.get("outcome") == "closed" for c in runs]
        half = sum(ok and s >= 50 for ok, s in zip(closed, shares, strict=True))
        seeds = ", ".join(str(c.get("seed")) for c in runs)
        per = ", ".join("n/a" if math.isnan(s) else f"{s:.0f}%" for s in shares)
        out.append(f"{name}, seeds {seeds}: the patch closed {per} of the gap; the gap closed (paired CI below "
                   f"zero) in {sum(closed)} of {len(runs)} seeds, by at least half in {half} of {len(runs)}.")
    return out


def case_sections(root: Path, cases: dict[str, dict]) -> list[Section]:
    summary = Section("summary", "Summary")
    for name, case in cases.items():
        summary.add(Paragraph(case_sentence(name, case), "summary"))
    for sentence in seed_sentences(cases):
        summary.add(Paragraph(sentence, "summary"))
    table = Section("cases", "Cases side by side (test split)")
    table.text("Dice and the Dice gap (max minus min group mean) in points, before (the deployed model) and after "
               "APPLE with its shipped defaults; the gap change's 95% CI is a paired bootstrap over test images. "
               "use_deployed / use_patched: the use measure's verdict for each model (used_gain: a group cue "
               "costs the worst-off group; used_no_gain: the output depends on the group but the worst-off group "
               "gains nothing from the other's statistics; not_used).")
    table.add(Table("cases", case_rows(cases), digits=1))
    links = [f"{name}/{rf.REPORT_HTML}" for name in cases if (root / name / rf.REPORT_HTML).is_file()]
    if links:
        table.text("Each case's full report (per-group results, leakage at every decoder input, the use measure, "
                   "training curves, overlays, the frozen-weights check): " + ", ".join(links) + ".", "note")
    return [summary, table]
