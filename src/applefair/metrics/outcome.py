"""Which outcome a mitigation had, in one sentence: the gap closed, the deployed model was kept, or the gap
stayed open (and whether the group stayed readable from, and used by, the decoder).

A reader of a mitigate or evaluate run needs to know which of these happened before reading any table;
the report's summary and the mitigate console print the sentence, built from the run's own files
(paired.json, leakage.json, use.json, and the selected epoch APPLE records in frozen_check.json).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

OUTCOMES = ("closed", "kept", "open")
KEPT, CLOSED, OPEN = "kept", "closed", "open"
PROBE_NAMES = {"": "logistic", "mlp_": "MLP", "spatial_": "spatial"}


@dataclass
class Outcome:
    """`kind`: closed (the paired CI of the gap change lies below zero), kept (no candidate qualified, or the
    predictions are the deployed model's), open (anything else); the numbers behind it and the sentence."""

    kind: str
    sentence: str
    gap_before: float = math.nan
    gap_after: float = math.nan
    change: float = math.nan
    change_ci: tuple[float, float] | None = None
    leakage_remains: bool | None = None
    use_remains: bool | None = None
    details: dict = field(default_factory=dict)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def identical_predictions(paired: Mapping | None) -> bool | None:
    """True when every paired change is exactly zero with a [0, 0] interval (the same predictions, as far as the
    metrics can tell), False when any differs, None without a paired comparison."""
    if not paired:
        return None
    diffs = []
    for section in ("overall", "groups"):
        node = paired.get(section)
        entries = [node] if section == "overall" else list((node or {}).values())
        for entry in entries:
            for v in (entry or {}).values() if isinstance(entry, Mapping) else []:
                if isinstance(v, Mapping) and "diff" in v:
                    diffs.append((v.get("diff"), v.get("ci")))
    if not diffs:
        return None
    return all(_num(d) and d == 0 and (not ci or all(_num(c) and c == 0 for c in ci)) for d, ci in diffs)


READABLE_CI_LOW = 0.6  # lower CI bound of a probe's AUC from which the group counts as readable
READABLE_AUC = 0.7  # the same without a CI


def readable_sites(leakage: Mapping | None) -> list[tuple[str, str, float]]:
    """(site, probe, AUC) of every decoder input a fresh probe still reads: the AUC of what the decoder receives
    (`auc_after`, else `auc`) with a CI whose lower end is at least 0.6 (an AUC of 0.7 where there is no CI).

    Not 0.5: the CI covers the test images drawn, not the refitting of the probe, and twelve probes are read
    per model (three probes at four decoder inputs of a U-Net); on the `none` benchmark, where the groups do
    not differ, the highest lower bound of 36 was 0.56 (docs/metrics.md)."""
    found = []
    for site, entry in (leakage or {}).items():
        if not isinstance(entry, Mapping):
            continue
        for pre, probe in PROBE_NAMES.items():
            key = f"{pre}auc_after" if f"{pre}auc_after" in entry else f"{pre}auc"
            auc, ci = entry.get(key), entry.get(f"{key}_ci")
            if not _num(auc):
                continue
            if (ci and _num(ci[0]) and ci[0] >= READABLE_CI_LOW) or (not (ci and _num(ci[0])) and auc >= READABLE_AUC):
                found.append((str(site), probe, float(auc)))
    return found


def _pts(v: float) -> str:
    text = f"{100 * v:.1f}"
    return "0.0" if text == "-0.0" else text


def classify_outcome(paired: Mapping | None, leakage: Mapping | None = None, use: Mapping | None = None,
                     selected_epoch: int | None = None, model: str | None = None) -> Outcome:
    """Classify a mitigate/evaluate result. `paired`: paired.json; `leakage`: leakage.json (per site);
    `use`: use.json ({model label: entry}); `model`: the label of the mitigated model in use.json (default:
    the one entry that is not `deployed`); `selected_epoch`: APPLE's (0 = no epoch qualified)."""
    gap = ((paired or {}).get("fairness") or {}).get("dice_delta") or {}
    before, after, diff, ci = gap.get("before"), gap.get("after"), gap.get("diff"), gap.get("ci")
    ci = (float(ci[0]), float(ci[1])) if ci and all(_num(c) for c in ci) else None
    readable = readable_sites(leakage)
    label = model or next((k for k in (use or {}) if k != "deployed"), None)
    entry = (use or {}).get(label) if label else None
    used = entry.get("used") if isinstance(entry, Mapping) else None
    out = Outcome(OPEN, "", float(before) if _num(before) else math.nan, float(after) if _num(after) else math.nan,
                  float(diff) if _num(diff) else math.nan, ci, bool(readable) if leakage else None,
                  used if isinstance(used, bool) else None,
                  {"readable": readable, "selected_epoch": selected_epoch})
    same = identical_predictions(paired)
    gap_text = (f"from {_pts(out.gap_before)} to {_pts(out.gap_after)} Dice points" if _num(before) and _num(after)
                else "by an unknown amount")
    ci_text = f" (paired 95% CI of the change {_pts(ci[0])} to {_pts(ci[1])} points)" if ci else ""
    if selected_epoch == 0 or same:
        why = "no candidate epoch qualified on the validation criterion (selected epoch 0)" if selected_epoch == 0 \
            else "its predictions are identical to the deployed model's"
        gap_now = f" at {_pts(out.gap_before)} Dice points" if _num(before) else ""
        out.kind, out.sentence = KEPT, (f"Outcome: the deployed model was kept: {why}, so the Dice gap stays"
                                        f"{gap_now}.")
        return out
    remains = _remains(readable, entry, used)
    if ci is not None and ci[1] < 0:
        share = f", {100 * -out.change / out.gap_before:.0f}% of it" if _num(before) and out.gap_before > 0 else ""
        out.kind = CLOSED
        out.sentence = (f"Outcome: the gap closed by {_pts(-out.change)} Dice points{share}, {gap_text}{ci_text}"
                        + (f"; {remains}" if remains else "") + ".")
        return out
    verb = "widened" if ci is not None and ci[0] > 0 else "did not close"
    if remains:
        tail = f"; {remains}"
    elif leakage is not None and entry is not None:
        tail = ("; yet no probe reads the group from the decoder's inputs and the model does not use it: what "
                "remains is not a group cue a latent patch can remove (a difficulty-type gap)")
    else:
        tail = ""
    out.sentence = f"Outcome: the gap {verb}, {gap_text}{ci_text}{tail}."
    return out


def _remains(readable: list[tuple[str, str, float]], entry: Mapping | None, used: object) -> str:
    parts = []
    if readable:
        site, probe, auc = max(readable, key=lambda r: r[2])
        n_sites = len({r[0] for r in readable})
        parts.append(f"the group stays readable at {n_sites} decoder input(s) (highest: {probe} probe AUC "
                     f"{auc:.2f} at {site})")
    if used is True and isinstance(entry, Mapping):
        parts.append(f"the model still uses it (output change {entry.get('output_change', math.nan):.3f} when its "
                     f"inputs are moved to another group's statistics, against at most "
                     f"{entry.get('null_output_change_max', math.nan):.3f} with the groups permuted)")
    return " and ".join(parts)


def explain_use(entry: Mapping | None) -> str | None:
    """Which kind of gap the deployed model has, in one sentence from its use measure (use.json's `deployed`):
    a misused cue a latent patch can remove, information missing from the images that it cannot restore, or
    no use of the group at all. None without a verdict."""
    if not isinstance(entry, Mapping) or entry.get("verdict") not in ("used_gain", "used_no_gain", "not_used"):
        return None
    change, top = entry.get("output_change", math.nan), entry.get("null_output_change_max", math.nan)
    worst, gain = entry.get("worst_group"), entry.get("worst_group_dice_change")
    gain_text = f"{100 * gain:+.1f} Dice points" if _num(gain) else "an unknown amount"
    moved = (f"moving each image's decoder inputs to the other group's statistics changes the masks by {change:.3f} "
             f"(1 - Dice; at most {top:.3f} with the groups permuted) and the {worst} group's Dice by {gain_text}")
    if entry["verdict"] == "used_gain":
        return (f"The deployed model uses the group, and the group's cue costs the {worst} group accuracy "
                f"({moved}): a misused cue, which a latent patch can remove.")
    if entry["verdict"] == "used_no_gain":
        return (f"The deployed model's output depends on the group, but the {worst} group gains nothing from the "
                f"other group's statistics ({moved}): what it lacks is missing from its images, which no latent "
                "patch can restore.")
    return f"The deployed model does not use the group ({moved}): there is no group cue for a patch to remove."


def restarts_sentence(summary: dict) -> str | None:
    """One line on the games a run played and the one it kept (None for a single game): from the summary
    `AppleResult.summary()` records in frozen_check.json."""
    runs = summary.get("restarts")
    if not runs:
        return None
    kept = summary.get("restart", 0)
    scores = ", ".join(f"{r['val_es_dice']:.3f}" + (" (kept)" if r["restart"] == kept else "") for r in runs)
    return (f"APPLE played {len(runs)} games (seeds {', '.join(str(r['seed']) for r in runs)}) and kept the one "
            f"that scored best on validation (ES-Dice at each game's selected epoch: {scores}); one game is one "
            f"draw, docs/ablation.md \"Restarts\".")
