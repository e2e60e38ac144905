"""The side-by-side page of a run of several cases (`applefair demo`): rows per case and seed, and one
sentence per case that was run with several seeds (the spread between draws)."""

from __future__ import annotations

import json

import pytest
import yaml

from applefair.report.cases import case_rows, seed_sentences
from applefair.workflows.demo import DemoSettings


def _case(case: str, seed: int, before: float, after: float, outcome: str) -> dict:
    return {"case": case, "seed": seed, "bias": "spurious", "gap_before": before, "gap_after": after,
            "dice_before": 0.8, "dice_after": 0.8, "outcome": outcome}


def test_seed_sentences_give_each_seeds_share_and_the_counts():
    cases = {"misused_cue": _case("misused_cue", 0, 0.30, 0.12, "closed"),
             "difficulty": _case("difficulty", 0, 0.40, 0.40, "kept"),
             "misused_cue_seed1": _case("misused_cue", 1, 0.20, 0.16, "closed"),
             "difficulty_seed1": _case("difficulty", 1, 0.50, 0.50, "kept"),
             "misused_cue_seed2": _case("misused_cue", 2, 0.10, 0.11, "open")}
    misused, difficulty = seed_sentences(cases)
    assert misused.startswith("misused_cue, seeds 0, 1, 2: the patch closed 60%, 20%, -10% of the gap")
    assert "in 2 of 3 seeds, by at least half in 1 of 3" in misused
    assert difficulty.startswith("difficulty, seeds 0, 1: the patch closed 0%, 0% of the gap")
    assert "in 0 of 2 seeds" in difficulty
    rows = case_rows(cases)
    assert list(rows["seed"]) == [0, 0, 1, 1, 2]
    assert rows.loc[2, "gap_before"] == pytest.approx(20.0)


def test_one_seed_per_case_has_no_seed_sentence():
    assert seed_sentences({"misused_cue": _case("misused_cue", 0, 0.3, 0.1, "closed"),
                           "difficulty": _case("difficulty", 0, 0.4, 0.4, "kept")}) == []


def test_demo_settings_name_the_runs_of_each_seed():
    st = DemoSettings(seed=4, seeds=2).resolved()
    assert st.runs() == [("misused_cue", "misused_cue", 4), ("difficulty", "difficulty", 4),
                         ("misused_cue_seed5", "misused_cue", 5), ("difficulty_seed5", "difficulty", 5)]
    assert DemoSettings(quick=True).resolved().seeds == 1 and DemoSettings().resolved().seeds == 3


@pytest.mark.slow
def test_demo_with_two_seeds_writes_a_folder_per_seed_and_the_spread(tmp_path):
    """`applefair demo --seeds 2` (tiny sizes from --config, one case): two case folders with their own data,
    cases.json says which seed each is, and the console and the side-by-side report have the seeds' sentence."""
    from typer.testing import CliRunner

    from applefair.cli import app

    out, cfg = tmp_path / "demo", tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"n": 40, "size": 32, "erm_epochs": 1, "apple_epochs": 1, "workers": 1}))
    res = CliRunner().invoke(app, ["demo", "--config", str(cfg), "--bias", "none", "--seeds", "2", "--device", "cpu",
                                   "--quiet", "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    cases = json.loads((out / "cases.json").read_text())
    assert {k: (v["case"], v["seed"]) for k, v in cases.items()} == {"none": ("none", 0), "none_seed1": ("none", 1)}
    a, b = ((out / f / "data" / "manifest.csv").read_text() for f in ("none", "none_seed1"))
    assert a != b  # another seed draws other data
    (sentence,) = seed_sentences(cases)
    assert sentence in (out / "report.md").read_text().replace("\\", "")
    assert sentence in " ".join(res.output.split())
    header = next(line for line in res.output.splitlines() if "case" in line and "outcome" in line)
    assert "seed" in header  # the table has a seed column when the run has several seeds
