"""Which outcome happened: closed, kept, or open (with what remains); and where a run probes."""

from __future__ import annotations

import math

from applefair.metrics.outcome import classify_outcome, identical_predictions, readable_sites


def _paired(before: float, after: float, ci: tuple[float, float], same: bool = False) -> dict:
    d = 0.0 if same else after - before
    zero = [0.0, 0.0] if same else [-0.01, 0.01]
    return {"overall": {"dice": {"before": 0.8, "after": 0.8 + d / 4, "diff": d / 4, "ci": zero}},
            "groups": {"F": {"dice": {"diff": d, "ci": zero}}, "M": {"dice": {"diff": 0.0 if same else 0.001,
                                                                               "ci": zero}}},
            "fairness": {"dice_delta": {"before": before, "after": after, "diff": d,
                                        "ci": [0.0, 0.0] if same else list(ci)}}}


LEAKY = {"model.0": {"role": "skip", "auc_before": 1.0, "auc_after": 1.0, "auc_after_ci": [0.99, 1.0],
                     "spatial_auc_after": 0.97, "spatial_auc_after_ci": [0.9, 1.0]},
         "bottleneck": {"role": "perturbed", "auc_before": 1.0, "auc_after": 0.52, "auc_after_ci": [0.4, 0.64]}}
CLEAN = {"bottleneck": {"role": "perturbed", "auc_before": 1.0, "auc_after": 0.52, "auc_after_ci": [0.4, 0.64],
                        "spatial_auc_after": 0.55, "spatial_auc_after_ci": [0.45, 0.66]}}
USED = {"deployed": {"used": True, "output_change": 0.25}, "patched": {"used": True, "output_change": 0.2,
                                                                       "null_output_change_max": 0.09}}
UNUSED = {"deployed": {"used": True}, "patched": {"used": False, "output_change": 0.05}}


def test_the_gap_closed_says_by_how_much_with_the_paired_ci():
    out = classify_outcome(_paired(0.30, 0.12, (-0.22, -0.14)), CLEAN, UNUSED, selected_epoch=4)
    assert out.kind == "closed" and out.change == -0.18 and out.change_ci == (-0.22, -0.14)
    assert "closed by 18.0 Dice points, 60% of it" in out.sentence and "-22.0 to -14.0" in out.sentence
    assert out.leakage_remains is False and out.use_remains is False
    leaky = classify_outcome(_paired(0.30, 0.12, (-0.22, -0.14)), LEAKY, USED, selected_epoch=4)
    assert leaky.kind == "closed" and "readable at 1 decoder input(s)" in leaky.sentence
    assert "still uses it" in leaky.sentence


def test_nothing_qualified_means_the_deployed_model_was_kept():
    out = classify_outcome(_paired(0.10, 0.10, (0, 0)), LEAKY, USED, selected_epoch=0)
    assert out.kind == "kept" and "selected epoch 0" in out.sentence and "10.0 Dice points" in out.sentence
    same = classify_outcome(_paired(0.10, 0.10, (0, 0), same=True), LEAKY, USED)
    assert same.kind == "kept" and "identical" in same.sentence


def test_the_gap_stayed_open_and_says_what_remains():
    out = classify_outcome(_paired(0.10, 0.08, (-0.05, 0.01)), LEAKY, USED, selected_epoch=3)
    assert out.kind == "open" and "did not close" in out.sentence and out.leakage_remains and out.use_remains
    assert "highest: logistic probe AUC 1.00 at model.0" in out.sentence
    wider = classify_outcome(_paired(0.10, 0.14, (0.01, 0.07)), LEAKY, None, selected_epoch=3)
    assert "widened" in wider.sentence and wider.use_remains is None
    difficulty = classify_outcome(_paired(0.40, 0.41, (-0.01, 0.03)), CLEAN, UNUSED, selected_epoch=2)
    assert difficulty.kind == "open" and "difficulty-type" in difficulty.sentence


def test_helpers():
    assert identical_predictions(None) is None
    assert identical_predictions(_paired(0.1, 0.1, (0, 0), same=True)) is True
    assert identical_predictions(_paired(0.1, 0.2, (0.05, 0.15))) is False
    assert readable_sites(LEAKY) == [("model.0", "logistic", 1.0), ("model.0", "spatial", 0.97)]
    assert readable_sites({"s": {"auc": 0.7}}) == [("s", "logistic", 0.7)]  # no CI: 0.7 or more
    assert readable_sites({"s": {"auc": 0.66, "auc_ci": [0.56, 0.76]}}) == []  # a lower bound under 0.6
    assert math.isnan(classify_outcome(None).gap_before)


def test_where_a_run_probes():
    from applefair.baselines.base import FitResult
    from applefair.models.registry import ModelSpec
    from applefair.workflows.evaluate import decoder_inputs
    from applefair.workflows.mitigate import probe_sites

    spec = ModelSpec(name="unet", site="b", skip_sites=["s0", "s1"])
    assert decoder_inputs(spec) == {"s0": "skip", "s1": "skip", "b": "bottleneck"}
    assert decoder_inputs(spec, ["b", "s0"]) == {"s0": "perturbed", "s1": "skip", "b": "perturbed"}
    fit = FitResult(model=None, trainable_params=0, seconds=0.0, history=[], latent_sites=["b"])
    assert probe_sites(spec, fit, patched=True) == {"s0": "skip", "s1": "skip", "b": "perturbed"}
    assert probe_sites(spec, fit, patched=False) == {"s0": "skip", "s1": "skip", "b": "bottleneck"}
    assert probe_sites(spec, fit, patched=True, probe="patched") == {"b": "perturbed"}
    fit.latent_sites = None
    assert probe_sites(spec, fit, patched=False) == {}


def test_mitigate_refuses_an_unknown_probe_choice(tmp_path):
    import pytest

    from applefair.apple.config import AppleConfig
    from applefair.data.groups import GroupSpec
    from applefair.errors import InputError
    from applefair.workflows.mitigate import run_mitigation

    with pytest.raises(InputError, match="--probe"):
        run_mitigation(tmp_path / "d", tmp_path / "m", tmp_path / "o", GroupSpec("sex"), AppleConfig(), probe="all")
    assert not (tmp_path / "o").exists()
