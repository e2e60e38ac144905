"""The report shows the three probes per decoder input, the use measure per model, and the outcome first."""

from __future__ import annotations

import json

import pandas as pd

LEAKAGE = {
    "model.0": {"attribute": "sex", "role": "skip", "patched": True, "auc_before": 1.0, "auc_before_ci": [1.0, 1.0],
                "auc_after": 1.0, "auc_after_ci": [1.0, 1.0], "mlp_auc_before": 0.99, "mlp_auc_after": 0.99,
                "spatial_auc_before": 0.98, "spatial_auc_before_ci": [0.95, 1.0], "spatial_auc_after": 0.98,
                "spatial_auc_after_ci": [0.95, 1.0], "auc": 1.0, "mlp_auc": 0.99, "spatial_auc": 0.98},
    "bottleneck": {"attribute": "sex", "role": "perturbed", "patched": True, "auc_before": 1.0, "auc_after": 0.62,
                   "auc_after_ci": [0.5, 0.74], "mlp_auc_before": 1.0, "mlp_auc_after": 0.7,
                   "spatial_auc_before": 1.0, "spatial_auc_after": 0.81, "spatial_auc_after_ci": [0.7, 0.9],
                   "auc": 0.62, "mlp_auc": 0.7, "spatial_auc": 0.81}}


def _use(change: float, used: bool, gain: float, verdict: str) -> dict:
    return {"statistic": "map", "output_change": change, "output_change_ci": [change - 0.02, change + 0.02],
            "null_output_change": 0.05, "null_output_change_max": 0.08, "p_value": 0.09, "used": used,
            "worst_group": "F", "worst_group_dice_change": gain,
            "worst_group_dice_change_ci": [gain - 0.02, gain + 0.02],
            "verdict": verdict, "groups": {"F": {"output_change": change, "dice_change": gain,
                                                 "dice_change_ci": [gain - 0.02, gain + 0.02]},
                                           "M": {"output_change": change, "dice_change": -0.01}}}


def _mitigate_run(root, tiny_run, paired_gap: dict) -> None:
    (root / "deployed").mkdir(parents=True)
    (root / "deployed" / "metrics.json").write_text((tiny_run / "before" / "metrics.json").read_text())
    (root / "metrics.json").write_text((tiny_run / "after" / "metrics.json").read_text())
    (root / "patch.safetensors").write_bytes((tiny_run / "patch.safetensors").read_bytes())
    (root / "leakage.json").write_text(json.dumps(LEAKAGE))
    (root / "use.json").write_text(json.dumps({"deployed": _use(0.25, True, 0.08, "used_gain"),
                                               "patched": _use(0.12, True, 0.03, "used_gain")}))
    (root / "paired.json").write_text(json.dumps({"fairness": {"dice_delta": paired_gap}}))
    (root / "frozen_check.json").write_text(json.dumps({"hash_before": "a", "hash_after": "a", "unchanged": True,
                                                        "selected_epoch": 3}))


def test_report_shows_probes_use_and_the_outcome(tmp_path, tiny_run):
    from applefair.report import write_reports

    _mitigate_run(tmp_path, tiny_run, {"before": 0.30, "after": 0.12, "diff": -0.18, "ci": [-0.22, -0.14]})
    write_reports(tmp_path, overlays=False)
    html = (tmp_path / "report.html").read_text()
    assert '<section id="use">' in html and '<section id="leakage">' in html
    summary = html[html.index('<section id="summary">'):html.index('<section id="results">')]
    assert "Outcome: the gap closed by 18.0 Dice points" in summary
    assert "the group stays readable at 2 decoder input(s)" in summary and "still uses it" in summary
    assert "Use of the group, patched: output change 0.120" in summary
    leak = pd.read_csv(tmp_path / "tables" / "leakage.csv")
    assert list(leak["role"]) == ["skip", "perturbed"]
    assert [c for c in leak.columns if not c.endswith(("_low", "_high"))] == [
        "site", "role", "auc_before", "auc_after", "mlp_auc_before", "mlp_auc_after", "spatial_auc_before",
        "spatial_auc_after"]
    use = pd.read_csv(tmp_path / "tables" / "use.csv")
    assert list(use["model"]) == ["deployed", "patched"] and use["dice_change_F"].tolist() == [0.08, 0.03]


def test_report_says_when_the_deployed_model_was_kept(tmp_path, tiny_run):
    from applefair.report.rundata import load_run
    from applefair.report.summary import summarize

    _mitigate_run(tmp_path, tiny_run, {"before": 0.1, "after": 0.1, "diff": 0.0, "ci": [0.0, 0.0]})
    (tmp_path / "frozen_check.json").write_text(json.dumps({"hash_before": "a", "hash_after": "a",
                                                            "unchanged": True, "selected_epoch": 0}))
    sentences = summarize(load_run(tmp_path))
    assert sentences[0].startswith("Outcome: the deployed model was kept") and "selected epoch 0" in sentences[0]
