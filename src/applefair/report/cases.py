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
        rows.append({"case": name, "bias": c.get("bias"), "dice_before": _pts(c.get("dice_before")),
                     "dice_after": _pts(c.get("dice_after")), "gap_before": _pts(c.get("gap_before")),
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


def case_sections(root: Path, cases: dict[str, dict]) -> list[Section]:
    summary = Section("summary", "Summary")
    for name, case in cases.items():
        summary.add(Paragraph(case_sentence(name, case), "summary"))
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
