"""The one model-selection score of every mitigation trainer (APPLE and the baselines).

The best epoch on validation is the one with the highest ES-Dice (Harvard-FairSeg, sum form)
among the epochs whose overall validation Dice is within the tolerance of the starting model's;
epoch 0 is the starting model itself, so a method that never helps returns the model it was given.
"""

from __future__ import annotations

from applefair.metrics.frame import MetricFrame


def selection_score(frame: MetricFrame) -> float:
    """ES-Dice (sum form) where group metrics exist, else overall Dice (e.g. a one-group subset)."""
    return float(frame.fairness.get("es_dice_sum", frame.dice))


def within_tolerance(dice: float, start_dice: float, tolerance: float) -> bool:
    """Overall Dice at most `tolerance` below the starting model's."""
    return dice >= start_dice - tolerance
