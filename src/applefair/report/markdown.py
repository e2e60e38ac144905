"""The markdown report of a before/after run, written from the numbers only."""

from __future__ import annotations


def before_after_rows(before: dict, after: dict) -> list[tuple[str, float, float]]:
    """(label, before, after) for overall Dice, per-group Dice, delta, ES-Dice (both forms)."""
    rows = [("Dice, overall", before["overall"]["dice"], after["overall"]["dice"])]
    for g in before["groups"]:
        rows.append((f"Dice, {before['attribute']}={g} (n={before['groups'][g]['n']})",
                     before["groups"][g]["dice"], after["groups"].get(g, {}).get("dice", float("nan"))))
    for key, label in (("dice_delta", "Dice gap (max - min)"), ("dice_worst", "Dice, worst group"),
                       ("dice_skewness", "Dice skewness"), ("es_dice_sum", "ES-Dice (FairSeg, sum)"),
                       ("es_dice_std", "ES-Dice (FairMedFM, std)")):
        rows.append((label, before["fairness"].get(key, float("nan")), after["fairness"].get(key, float("nan"))))
    return rows


def verdict(before: dict, after: dict, tol: float = 0.005) -> str:
    """One plain sentence on what happened to the gap and to overall Dice."""
    gb, ga = before["fairness"]["dice_delta"], after["fairness"]["dice_delta"]
    db, da = before["overall"]["dice"], after["overall"]["dice"]
    change = "shrank" if ga < gb - tol else ("widened" if ga > gb + tol else "did not change materially")
    rel = f" ({abs(gb - ga) / gb:.0%} of the original gap)" if gb > 0 and change != "did not change materially" else ""
    return (f"The Dice gap between groups {change}: {100 * gb:.1f} -> {100 * ga:.1f} points{rel}, "
            f"while overall Dice moved by {100 * (da - db):+.1f} points ({100 * db:.1f} -> {100 * da:.1f}).")


def demo_report(config: dict, before: dict, after: dict, check: dict, leakage: dict, history: list[dict]) -> str:
    lines = ["# applefair run report", "",
             f"Attribute: `{before['attribute']}`; test images: {before['overall']['n']}; "
             f"single run (seed {config.get('seed')}), no confidence intervals in this report.", "",
             "## Before (deployed) vs after (APPLE)", "",
             "| metric | before | after | change |", "|---|---:|---:|---:|"]
    for label, b, a in before_after_rows(before, after):
        lines.append(f"| {label} | {b:.4f} | {a:.4f} | {a - b:+.4f} |")
    lines += ["", f"**Summary.** {verdict(before, after)}", ""]
    if check.get("selected_epoch") == 0:
        lines += ["No APPLE epoch beat the unchanged model on the validation criterion "
                  "(ES-Dice with overall Dice within tolerance), so the selected perturber is the "
                  "zero-initialised one: APPLE did not help on this data.", ""]
    lines += ["## Attribute leakage (fresh probe)", "",
              "A new logistic-regression probe, cross-validated on the test split, predicts the group "
              "from pooled latents at the perturbed site (0.5 = no information, 1.0 = fully readable).", "",
              "| site | AUC before (f_o) | AUC after (f_p) |", "|---|---:|---:|"]
    for site, v in leakage.items():
        lines.append(f"| `{site}` | {v['auc_before']:.3f} | {v['auc_after']:.3f} |")
    lines += ["", "## Frozen-weights check", "",
              f"- SHA-256 of the deployed state dict before APPLE: `{check['hash_before']}`",
              f"- after APPLE: `{check['hash_after']}`",
              f"- unchanged: **{'yes' if check['unchanged'] else 'NO'}**",
              f"- selected APPLE epoch (validation): {check['selected_epoch']}", "",
              "## APPLE training curve", "",
              "| epoch | L_seg | L_D | D accuracy | D entropy | val Dice | val ES-Dice |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for h in history:
        cells = [f"{h[k]:.4f}" if k in h else "" for k in
                 ("l_seg", "l_d", "d_acc", "d_entropy", "val_dice", "val_es_dice")]
        lines.append(f"| {h['epoch']} | " + " | ".join(cells) + " |")
    lines += ["", "Groups with unknown attribute values are counted in the overall metrics and "
              "excluded from group metrics and from the discriminator's loss.", ""]
    return "\n".join(lines)
