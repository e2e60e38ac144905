"""How much of an APPLE outcome is the draw of the game's initialisation, and what choosing among restarts gains.

    OMP_NUM_THREADS=1 python bench/defaults_ablation.py --out runs/restarts --models sam,unet \
        --benches spurious,vessels,none,contrast --seeds 0 1 2 --variants paper,paper_r1,paper_r2 --workers 2
    OMP_NUM_THREADS=1 python bench/defaults_ablation.py --out runs/restarts --models unet \
        --benches spurious,vessels,none,contrast --seeds 0 1 2 --variants paper_fid --workers 2
    python bench/restarts_analysis.py runs/restarts/results.jsonl --versus paper_fid --out bench/results/restarts

For each (model, benchmark, seed), the data and the deployed model are fixed and APPLE (the shipped default on
these models) is played from three initialisations (`paper`, `paper_r1`, `paper_r2`: seeds s, s+1000, s+2000;
`--family paper_fid` reads `paper_fid`, `paper_fid_r1`, `paper_fid_r2`).
"best of k" keeps, among the first k restarts, the one whose selected epoch has the highest validation ES-Dice
(the selection's own criterion, applied across restarts; ties and "nothing qualified" keep the first), and is
then scored on the test split like any single run. A seed meets the target as in the defaults ablation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from defaults_ablation import runs_table  # noqa: E402


def best_of(rows: list[dict], k: int) -> dict:
    """Among the first k restarts, the one `restarts: k` keeps (`apple.trainer.pick_restart`, on the rows'
    histories and selected epochs)."""
    from applefair.apple.trainer import AppleResult, pick_restart

    games = [AppleResult(patched=None, history=r["history"], selected_epoch=r["selected_epoch"], sites=[])
             for r in rows[:k]]
    return rows[pick_restart(games)]


def restart_variants(family: str) -> tuple[str, str, str]:
    """The three restart variants of a variant family (`paper`: paper, paper_r1, paper_r2)."""
    return family, f"{family}_r1", f"{family}_r2"


def table(rows: list[dict], family: str = "paper") -> pd.DataFrame:
    restarts = restart_variants(family)
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["variant"] in restarts:
            cells.setdefault((r["model"], r["bench"], r["seed"]), {})[r["variant"]] = r
    recs = []
    for (model, bench, seed), by in sorted(cells.items()):
        if set(by) != set(restarts):
            continue
        ordered = [by[v] for v in restarts]
        runs = runs_table(ordered).set_index("variant")
        rec = {"model": model, "bench": bench, "seed": seed, "gap_before": runs.gap_before.iloc[0]}
        for i, v in enumerate(restarts):
            rec[f"r{i}"] = runs.gap_reduction[v]
            rec[f"r{i}_meets"] = bool(runs.meets[v])
            rec[f"r{i}_widened"] = bool(runs.widened[v])
            rec[f"r{i}_dice"] = runs.dice_change[v]
        for k in (2, 3):
            pick = best_of(ordered, k)["variant"]
            rec[f"best{k}"] = runs.gap_reduction[pick]
            rec[f"best{k}_meets"] = bool(runs.meets[pick])
            rec[f"best{k}_widened"] = bool(runs.widened[pick])
            rec[f"best{k}_dice"] = runs.dice_change[pick]
            rec[f"best{k}_pick"] = restarts.index(pick)
        recs.append(rec)
    return pd.DataFrame(recs)


def markdown(t: pd.DataFrame) -> str:
    head = ["model", "benchmark", "gap ERM per seed", "reduction % per seed: restart 0 / 1 / 2",
            "spread within a seed (max - min)", "best of 3 (restart picked)", "seeds meeting: each restart",
            "best of 3 meeting", "widened (any restart / best of 3)", "Dice change best of 3"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, bench), sub in t.groupby(["model", "bench"], sort=False):
        n = len(sub)
        per = "; ".join(f"{r.r0:.0f} / {r.r1:.0f} / {r.r2:.0f}" for r in sub.itertuples())
        spread = ", ".join(f"{max(r.r0, r.r1, r.r2) - min(r.r0, r.r1, r.r2):.0f}" for r in sub.itertuples())
        best = ", ".join(f"{r.best3:.0f} ({r.best3_pick})" for r in sub.itertuples())
        each = " / ".join(f"{int(sub[f'r{i}_meets'].sum())}/{n}" for i in range(3))
        widened_any = int(sub[[f"r{i}_widened" for i in range(3)]].any(axis=1).sum())
        lines.append("| " + " | ".join([
            model, bench, ", ".join(f"{g:.1f}" for g in sub.gap_before), per, spread, best, each,
            f"{int(sub.best3_meets.sum())}/{n}", f"{widened_any}/{n} / {int(sub.best3_widened.sum())}/{n}",
            ", ".join(f"{d:+.1f}" for d in sub.best3_dice)]) + " |")
    return "\n".join(lines) + "\n"


def versus(rows: list[dict], variant: str, family: str = "paper") -> str:
    """Best of 3 of `family` (one game per run, picked as `restarts: 3` picks) against `variant` run with
    `restarts: 3` itself (the same three seeds), per (model, benchmark): reduction per seed, seeds meeting
    the target, widened gaps, Dice change."""
    best = table(rows, family)
    other = runs_table([r for r in rows if r["variant"] == variant]).set_index(["model", "bench", "seed"])
    head = ["model", "benchmark", f"{family}: best of 3, reduction % per seed", f"{variant}: reduction % per seed",
            "seeds meeting (best of 3 / variant)", "widened (best of 3 / variant)", "Dice change (best of 3 / variant)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, bench), sub in best.groupby(["model", "bench"], sort=False):
        keys = [(model, bench, s) for s in sub.seed if (model, bench, s) in other.index]
        if not keys:
            continue
        sub = sub[sub.seed.isin([k[2] for k in keys])]
        o = other.loc[keys]
        lines.append("| " + " | ".join([
            model, bench, ", ".join(f"{x:.0f}" for x in sub.best3), ", ".join(f"{x:.0f}" for x in o.gap_reduction),
            f"{int(sub.best3_meets.sum())}/{len(sub)} / {int(o.meets.sum())}/{len(o)}",
            f"{int(sub.best3_widened.sum())} / {int(o.widened.sum())}",
            ", ".join(f"{x:+.1f}" for x in sub.best3_dice) + " / " + ", ".join(f"{x:+.1f}" for x in o.dice_change),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="results.jsonl of bench/defaults_ablation.py with the three restart variants")
    ap.add_argument("--out", default="", help="prefix for <out>.md and <out>.csv (default: print only)")
    ap.add_argument("--family", default="paper", help="the variant whose restarts to read: FAMILY, FAMILY_r1, "
                                                      "FAMILY_r2 (default paper)")
    ap.add_argument("--versus", default="", help="also compare best of 3 with this variant run with restarts: 3")
    a = ap.parse_args()
    rows = [json.loads(x) for x in Path(a.results).read_text().splitlines() if x.strip()]
    t = table(rows, a.family)
    text = markdown(t)
    if a.versus:
        text += "\n" + versus(rows, a.versus, a.family)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{a.out}.md").write_text(text)
        t.to_csv(f"{a.out}.csv", index=False, float_format="%.4f")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
