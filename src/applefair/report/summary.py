"""The plain-language summary, generated from the numbers (never written by hand).

Each sentence is produced only when the numbers behind it exist, and says which direction
things moved with a tolerance, so a 0.1-point wobble is not sold as an improvement.
"""

from __future__ import annotations

import math

import pandas as pd

from applefair.engine.runfolder import leakage_per_site
from applefair.metrics.outcome import Outcome, classify_outcome
from applefair.report.rundata import Evaluation, RunData
from applefair.report.tables import ci_interval, ci_pair

TOL = 0.005  # half a Dice point: changes smaller than this are "about the same"


def _number(v: object) -> bool:
    """A finite number (metrics.json writes NaN as null: e.g. a gap under a convention whose missing-group
    rule makes it undefined)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pts(v: float | None) -> str:
    return f"{100 * v:.1f}" if _number(v) else "n/a"


def _f3(v: float | None) -> str:
    return f"{v:.3f}" if _number(v) else "n/a"


def _ci_pts(ci: tuple[float, float] | None) -> str:
    return f" (95% CI {_pts(ci[0])} to {_pts(ci[1])})" if ci else ""


def _extremes(m: dict) -> tuple[str, str] | None:
    groups = {g: v["dice"] for g, v in m["groups"].items() if isinstance(v, dict) and _number(v.get("dice"))}
    if len(groups) < 2:
        return None
    return max(groups, key=groups.get), min(groups, key=groups.get)


def _between(m: dict) -> str:
    ext = _extremes(m)
    if ext is None:
        return "groups"
    if len(m["groups"]) == 2:
        return f"{ext[0]} and {ext[1]}"
    return f"the best ({ext[0]}) and worst ({ext[1]}) of {len(m['groups'])} groups"


def _paired_ci(run: RunData, key: str) -> tuple[float, float] | None:
    """CI of the change in `key` from a paired comparison (paired.json or after's 'ci'['change'])."""
    for node in ((run.paired or {}).get("ci"), run.paired, (run.evaluations[-1].metrics.get("ci") or {}).get("change")):
        if isinstance(node, dict):
            for sub in (node.get("fairness"), node.get("overall"), node):
                if isinstance(sub, dict) and key in sub:
                    pair = ci_pair(sub[key])
                    if pair:
                        return pair
    return None


def compare_sentences(run: RunData, a: Evaluation, b: Evaluation) -> list[str]:
    """What happened between a reference evaluation `a` and a mitigated one `b`."""
    ma, mb = a.metrics, b.metrics
    out = []
    ga, gb = ma["fairness"].get("dice_delta"), mb["fairness"].get("dice_delta")
    da, db = ma["overall"].get("dice"), mb["overall"].get("dice")
    if _number(ga) and _number(gb):
        verb = "fell" if gb < ga - TOL else ("rose" if gb > ga + TOL else "stayed about the same")
        change_ci = _paired_ci(run, "dice_delta")
        ci_text = (f" (95% CI of the change {_pts(change_ci[0])} to {_pts(change_ci[1])} points)" if change_ci
                   else _ci_pts(ci_interval(mb, "fairness", "dice_delta")))
        moved = f"from {_pts(ga)} to {_pts(gb)} points" if verb != "stayed about the same" else \
            f"({_pts(ga)} to {_pts(gb)} points)"
        text = f"The Dice gap between {_between(ma)} {verb} {moved}{ci_text}"
        if _number(da) and _number(db):
            text += f" while overall Dice moved by {100 * (db - da):+.1f} points ({_pts(da)} to {_pts(db)})"
        out.append(text + ".")
    ext = _extremes(ma)
    if ext and ext[1] in mb["groups"]:
        worst = ext[1]
        wa, wb = ma["groups"][worst]["dice"], mb["groups"][worst]["dice"]
        out.append(f"The group that was worst off before ({worst}) went from {_pts(wa)} to {_pts(wb)} Dice points"
                   + _ci_pts(ci_interval(mb, "groups", "dice", worst)) + ".")
    for key, name in (("es_dice_sum", "ES-Dice (Harvard-FairSeg, sum form)"),
                      ("es_dice_std", "ES-Dice (FairMedFM, std form)")):
        va, vb = ma["fairness"].get(key), mb["fairness"].get(key)
        if _number(va) and _number(vb):
            verb = "rose" if vb > va + TOL else ("fell" if vb < va - TOL else "stayed about the same")
            out.append(f"{name} {verb}: {va:.3f} to {vb:.3f} (higher is fairer at equal Dice).")
    return out


def single_sentences(ev: Evaluation) -> list[str]:
    m = ev.metrics
    out = [f"Overall Dice is {_pts(m['overall']['dice'])} points on {m['overall'].get('n', '?')} test images"
           + _ci_pts(ci_interval(m, "overall", "dice")) + "."]
    ext = _extremes(m)
    if "dice_delta" in m["fairness"] and not _number(m["fairness"]["dice_delta"]):
        missing = ", ".join(map(str, m.get("missing_groups") or [])) or "a group"
        name = (m.get("convention") or {}).get("name", "this")
        out.append(f"The Dice gap and the ES-Dice scores are not defined under the {name} convention: {missing} "
                   "has no test image.")
    elif ext and "dice_delta" in m["fairness"]:
        out.append(f"The Dice gap between {_between(m)} is {_pts(m['fairness']['dice_delta'])} points"
                   + _ci_pts(ci_interval(m, "fairness", "dice_delta"))
                   + f"; ES-Dice is {_f3(m['fairness'].get('es_dice_sum'))} (sum form) and "
                   f"{_f3(m['fairness'].get('es_dice_std'))} (std form).")
    return out


PROBE_LABELS = (("", "logistic"), ("mlp_", "MLP"), ("spatial_", "spatial"))


def leakage_sentence(leakage: dict) -> str | None:
    """The highest fresh-probe AUC over the decoder inputs, before and after (or as the decoder sees it)."""
    leakage = leakage_per_site(leakage)
    best: dict[str, tuple[float, str, str]] = {}
    for site, v in leakage.items():
        if not isinstance(v, dict):
            continue
        for when in ("before", "after", ""):
            for pre, probe in PROBE_LABELS:
                key = f"{pre}auc_{when}" if when else f"{pre}auc"
                if _number(v.get(key)) and (when not in best or v[key] > best[when][0]):
                    best[when] = (float(v[key]), probe, site)
    n = sum(isinstance(v, dict) for v in leakage.values())
    where = f"over {n} decoder input{'s' if n != 1 else ''}"
    if "before" in best and "after" in best:
        (b, pb, sb), (a, pa, sa) = best["before"], best["after"]
        return (f"The best fresh probe {where} reads the attribute with AUC {b:.2f} before ({pb} probe at {sb}) and "
                f"{a:.2f} after ({pa} probe at {sa}); 0.5 means no information, 1.0 fully readable.")
    for when in ("before", ""):
        if when in best:
            v, probe, site = best[when]
            return (f"The best fresh probe {where} reads the attribute with AUC {v:.2f} ({probe} probe at {site}); "
                    "0.5 means no information, 1.0 fully readable.")
    return None


def use_sentence(label: str, entry: dict) -> str | None:
    """One line per model: does its output depend on the group statistics of its decoder inputs?"""
    change = entry.get("output_change")
    if not _number(change):
        return None
    ci = entry.get("output_change_ci")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(_number(c) for c in ci) else ""
    null, top = entry.get("null_output_change"), entry.get("null_output_change_max")
    null_text = f" (groups permuted: {null:.3f}, at most {top:.3f})" if _number(null) and _number(top) else ""
    verdict = {True: "used", False: "not distinguishable from the permuted groups"}.get(entry.get("used"), "")
    reading = {"used_gain": " The worst-off group's Dice rises with the other groups' statistics: the decoder "
                            "reads a group cue that costs that group (a cue a latent patch can target).",
               "used_no_gain": " The worst-off group's Dice does not rise with the other groups' statistics: the "
                               "output depends on the group's latent statistics, but they do not carry what that "
                               "group lacks (as with missing information)."}.get(entry.get("verdict"), "")
    text = f"Use of the group, {label}: output change {change:.3f}{ci_text}{null_text}" + \
        (f": {verdict}" if verdict else "")
    worst, gain = entry.get("worst_group"), entry.get("worst_group_dice_change")
    if worst is not None and _number(gain):
        gci = entry.get("worst_group_dice_change_ci")
        gci_text = f" [{100 * gci[0]:+.1f}, {100 * gci[1]:+.1f}]" if gci and all(_number(c) for c in gci) else ""
        text += (f"; moving the worst-off group ({worst}) to the other groups' statistics changes its Dice by "
                 f"{100 * gain:+.1f} points{gci_text}")
    return text + "." + reading


def comparison_sentences(agg: pd.DataFrame) -> list[str]:
    front = agg[agg["pareto"]]["method"].astype(str).unique().tolist()
    out = [f"{agg['method'].nunique()} methods were compared; on the Pareto front of overall Dice and Dice gap: "
           + ", ".join(front) + "."]
    if "dice_delta" in agg.columns and agg["dice_delta"].notna().any():
        best = agg.loc[agg["dice_delta"].idxmin()]
        out.append(f"Smallest gap: {best['method']} ({_pts(best['dice_delta'])} points, overall Dice "
                   f"{_pts(best['dice'])}).")
    return out


def outcome_of(run: RunData) -> Outcome | None:
    """The outcome of a run that compares a mitigated model with the deployed one (paired.json), else None."""
    if not run.paired or not run.before_after:
        return None
    selected = (run.frozen or {}).get("selected_epoch")
    label = run.before_after[1].label
    return classify_outcome(run.paired, leakage_per_site(run.leakage) if run.leakage else None, run.use,
                            selected if isinstance(selected, int) and not isinstance(selected, bool) else None,
                            label if run.use and label in run.use else None)


def summarize(run: RunData, agg: pd.DataFrame | None = None) -> list[str]:
    """All summary sentences for a run folder: the outcome first, when the run has one."""
    out: list[str] = []
    outcome = outcome_of(run)
    if outcome is not None:
        out.append(outcome.sentence)
    if run.before_after:
        out += compare_sentences(run, *run.before_after)
    elif run.evaluations:
        out += single_sentences(run.evaluations[0])
    if run.frozen and run.frozen.get("selected_epoch") == 0 and outcome is None:
        out.append("No APPLE epoch beat the unchanged model on the validation criterion, so the selected "
                   "perturber is the zero-initialised one: APPLE did not help on this data.")
    if run.leakage:
        s = leakage_sentence(run.leakage)
        if s:
            out.append(s)
    for label, entry in (run.use or {}).items():
        s = use_sentence(label, entry)
        if s:
            out.append(s)
    if run.frozen and "unchanged" in run.frozen:
        out.append("The deployed model's weights are bit-identical before and after (SHA-256 check)."
                   if run.frozen["unchanged"] else
                   "WARNING: the deployed model's weights changed (SHA-256 check failed).")
    n_unknown = max((e.metrics["overall"].get("n_unknown_group", 0) for e in run.evaluations), default=0)
    if n_unknown:
        out.append(f"{n_unknown} test images have an unknown attribute value: they count in overall metrics "
                   "and are excluded from group metrics.")
    if agg is not None and len(agg):
        out += comparison_sentences(agg)
    return out
