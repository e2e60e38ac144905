"""report.html / report.md / tables from run folders of every shape."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from applefair.errors import InputError


def test_demo_shaped_run_has_every_section(tiny_run_report):
    root, written = tiny_run_report
    html = (root / "report.html").read_text()
    for sid in ("summary", "results", "leakage", "training", "overlays", "frozen", "data", "config", "notes"):
        assert f'<section id="{sid}">' in html, sid
    # self-contained: every image is a data URI, nothing refers to the network or to local files
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= 4 and all(s.startswith(("data:image/svg+xml;base64,", "data:image/png;base64,")) for s in srcs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    # overlays were recomputed from deployed/ + patch + data (a PNG), not skipped
    assert "Example overlays skipped" not in html
    assert (root / "plots" / "overlays.png").stat().st_size > 1000
    for name in ("results", "data_summary", "leakage", "history", "frozen_check"):
        assert (root / "tables" / f"{name}.csv").is_file(), name
    assert written["report.html"] == root / "report.html"


def test_results_table_matches_metrics_and_ci(tiny_run_report):
    root, _ = tiny_run_report
    before = json.loads((root / "before" / "metrics.json").read_text())
    after = json.loads((root / "after" / "metrics.json").read_text())
    table = pd.read_csv(root / "tables" / "results.csv")
    row = table[table["metric"] == "Dice, overall"].iloc[0]
    assert row["before"] == pytest.approx(before["overall"]["dice"])
    assert row["after"] == pytest.approx(after["overall"]["dice"])
    assert row["change"] == pytest.approx(after["overall"]["dice"] - before["overall"]["dice"])
    assert row["after_ci_low"] == pytest.approx(after["ci"]["overall"]["dice"][0])
    gap = table[table["key"] == "dice_delta"].iloc[0]
    assert gap["before"] == pytest.approx(before["fairness"]["dice_delta"])
    assert set(table["key"]) >= {"es_dice_sum", "es_dice_std"}
    md = (root / "report.md").read_text()
    assert f"{before['overall']['dice']:.4f}" in md and "95% CI" in md


def test_data_summary_counts_splits_and_groups(tiny_run_report):
    root, _ = tiny_run_report
    counts = pd.read_csv(root / "tables" / "data_summary.csv").set_index("split")
    manifest = pd.read_csv(root / "data" / "manifest.csv", dtype=str, keep_default_na=False)
    for split in ("train", "val", "test"):
        assert counts.loc[split, "total"] == (manifest["split"] == split).sum()
    assert counts.loc["all", "total"] == len(manifest)
    assert counts.loc["all", "F"] == (manifest["sex"] == "F").sum()


def test_summary_sentences_follow_the_numbers():
    from applefair.report.rundata import Evaluation, RunData
    from applefair.report.summary import summarize

    def metrics(f, m, overall):
        return {"attribute": "sex", "overall": {"n": 10, "dice": overall},
                "groups": {"F": {"dice": f}, "M": {"dice": m}},
                "fairness": {"dice_delta": abs(f - m), "es_dice_sum": 0.8, "es_dice_std": 0.85}}

    run = RunData(root=None, evaluations=[Evaluation("before", metrics(0.80, 0.881, 0.85)),
                                          Evaluation("after", metrics(0.85, 0.873, 0.862))])
    run.paired = {"fairness": {"dice_delta": {"diff": -0.058, "ci": [-0.07, -0.04]}}}
    text = " ".join(summarize(run))
    assert "between M and F fell from 8.1 to 2.3 points" in text
    assert "95% CI of the change -7.0 to -4.0 points" in text
    assert "overall Dice moved by +1.2 points" in text
    assert "worst off before (F) went from 80.0 to 85.0" in text
    run.evaluations[1] = Evaluation("after", metrics(0.70, 0.95, 0.84))
    assert "rose from 8.1 to 25.0" in " ".join(summarize(run))


def test_missing_files_omit_sections(tmp_path, tiny_run):
    from applefair.report import write_reports

    (tmp_path / "metrics.json").write_text((tiny_run / "after" / "metrics.json").read_text())
    write_reports(tmp_path, overlays=True)
    html = (tmp_path / "report.html").read_text()
    assert '<section id="results">' in html and '<section id="summary">' in html
    for sid in ("leakage", "training", "frozen", "data", "config", "comparison"):
        assert f'<section id="{sid}">' not in html, sid
    assert "Example overlays skipped" in html  # no model, patch or data: a note, not a crash
    empty = tmp_path / "empty"
    empty.mkdir()
    write_reports(empty)
    assert "holds no metrics" in (empty / "report.md").read_text()


def test_corrupt_file_is_bad_input(tmp_path):
    from applefair.report import write_reports

    (tmp_path / "leakage.json").write_text("{not json")
    with pytest.raises(InputError, match="leakage.json"):
        write_reports(tmp_path)
    with pytest.raises(InputError, match="run folder not found"):
        write_reports(tmp_path / "nope")


def test_comparison_tradeoff_and_pareto(tmp_path):
    from applefair.report import write_reports
    from applefair.report.tables import pareto_mask

    assert pareto_mask(np.array([0.9, 0.8, 0.85, 0.7]), np.array([0.1, 0.02, 0.2, 0.02])).tolist() == \
        [True, True, False, False]
    rows = []
    for seed in (0, 1):
        for method, dice, gap in (("erm", 0.86, 0.08), ("apple", 0.85, 0.03), ("groupdro", 0.80, 0.05)):
            rows.append({"method": method, "seed": seed, "dice": dice + 0.002 * seed, "dice_delta": gap,
                         "es_dice_sum": dice / (1 + 2 * gap), "status": "done"})
    rows.append({"method": "febs", "seed": 0, "dice": "", "dice_delta": "", "es_dice_sum": "", "status": "not run"})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    write_reports(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "comparison.csv").set_index("method")
    assert table.loc["erm", "runs"] == 2 and table.loc["erm", "dice"] == pytest.approx(0.861)
    assert table["pareto"].to_dict() == {"erm": True, "apple": True, "groupdro": False}
    assert "febs" not in table.index
    html = (tmp_path / "report.html").read_text()
    assert '<section id="comparison">' in html and (tmp_path / "plots" / "tradeoff.svg").is_file()
    assert "Pareto front" in html and "on the Pareto front of overall Dice and Dice gap: erm, apple" in html


def test_comparison_needs_method_and_dice(tmp_path):
    from applefair.report.rundata import read_comparison

    (tmp_path / "r.csv").write_text("name,dice\na,0.5\n")
    with pytest.raises(InputError, match="method"):
        read_comparison(tmp_path / "r.csv")
    (tmp_path / "r.csv").write_text("method,dice,dice_delta\nerm,0.85 ± 0.01,0.05 ± 0.01\n")
    assert read_comparison(tmp_path / "r.csv")["dice"].tolist() == [0.85]


def test_regenerating_removes_stale_outputs(tmp_path, tiny_run):
    from applefair.report import write_reports

    (tmp_path / "history.csv").write_text((tiny_run / "history.csv").read_text())
    write_reports(tmp_path, overlays=False)
    assert (tmp_path / "plots" / "training_curves.svg").is_file()
    (tmp_path / "history.csv").unlink()
    write_reports(tmp_path, overlays=False)
    assert not (tmp_path / "plots" / "training_curves.svg").exists()
    assert not (tmp_path / "tables" / "history.csv").exists()


def test_data_summary_counts_unknown_values_apart():
    from applefair.report.tables import data_summary

    manifest = pd.DataFrame({"split": ["train", "train", "test", "test", "val"],
                             "sex": ["F", "", "M", "-1", "unknown"]})
    table = data_summary(manifest, "sex", ["F", "M"]).set_index("split")
    assert table.loc["all"].to_dict() == {"F": 1, "M": 1, "unknown": 3, "total": 5}
    assert table.loc["train", "unknown"] == 1 and list(table.index) == ["train", "val", "test", "all"]
    assert data_summary(manifest, "age", ["F", "M"]) is None


def test_leakage_table_reads_evaluate_keys():
    from applefair.report.tables import leakage_table

    leakage = {"enc.4": {"attribute": "sex", "n": 40, "patched": True, "auc_before": 0.9, "auc_before_ci": [0.8, 0.97],
                         "auc_after": 0.6, "auc_after_ci": [None, None], "mlp_auc_before": 0.95, "auc": 0.6,
                         "auc_ci": [0.5, 0.7], "n_per_group": {"F": 10, "M": 30}}}
    numbers, shown = leakage_table(leakage)
    assert list(numbers.columns) == ["site", "auc_before", "auc_before_ci_low", "auc_before_ci_high", "auc_after",
                                     "mlp_auc_before"]
    assert shown.loc[0, "auc_before"] == "0.900 [0.800, 0.970]" and shown.loc[0, "auc_after"] == "0.600"


def test_mitigate_layout_pairs_deployed_with_top_level(tmp_path, tiny_run):
    from applefair.report.rundata import config_path, load_run

    for sub in ("deployed", "val"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "metrics.json").write_text((tiny_run / "before" / "metrics.json").read_text())
    (tmp_path / "metrics.json").write_text((tiny_run / "after" / "metrics.json").read_text())
    (tmp_path / "leakage.json").write_text(json.dumps({"sites": ["enc"], "auc_before": 1.0, "auc_after": 0.7}))
    run = load_run(tmp_path)
    assert [e.label for e in run.evaluations] == ["deployed", "mitigated"]  # val/ is not a test evaluation
    assert [e.label for e in run.before_after] == ["deployed", "mitigated"]
    assert config_path({"argv": ["applefair", "mitigate", "--data", "d/x"]}, "data") == "d/x"
    from applefair.report.tables import leakage_table

    assert leakage_table(run.leakage)[0].to_dict("records") == [{"site": "enc", "auc_before": 1.0, "auc_after": 0.7}]


def test_undefined_aggregates_read_as_not_available(tmp_path):
    """Under the fairseg or fairmedfm convention a group absent from the test set makes the gap and the
    ES scores undefined (null in metrics.json): the report says n/a instead of failing."""
    from applefair.engine.runfolder import write_evaluation
    from applefair.metrics.fairness import fairness_summary
    from applefair.report.build import write_reports

    per_sample = pd.DataFrame({"id": ["a", "b", "c"], "group": ["F", "F", "F"], "dice": [0.8, 0.6, 0.7]})
    metrics = fairness_summary(per_sample, "sex", ["F", "M"], convention="fairseg")
    assert metrics["fairness"]["dice_delta"] != metrics["fairness"]["dice_delta"]  # NaN: M has no sample
    write_evaluation(tmp_path, metrics, per_sample)
    assert json.loads((tmp_path / "metrics.json").read_text())["fairness"]["dice_delta"] is None
    write_reports(tmp_path, overlays=False)
    md = (tmp_path / "report.md").read_text()
    assert "Overall Dice is 70.0 points" in md
    assert "not defined under the fairseg convention: M has no test image" in md
