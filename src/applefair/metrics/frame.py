"""MetricFrame: one object for a model's per-group metrics, modelled on fairlearn's MetricFrame.

fairlearn's MetricFrame is built for classification metrics over (y_true, y_pred); here the
per-sample segmentation scores already exist, so the frame groups and summarises them. Overall,
by-group, differences, ratios, both equity-scaled forms and the bootstrap CIs are views of one
object, and `to_dict()` is the metrics.json content (the `fairness_summary` schema), so the frame
is what travels between the trainers, the use cases and the run folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from applefair.metrics.conventions import Convention
from applefair.metrics.fairness import fairness_summary, metric_columns


class MetricFrame:
    """overall / by_group / difference / ratio / gap / es / ci of per-sample scores.

    Example: ``MetricFrame(per_sample, ["F", "M"]).difference()["dice"]`` is the Dice gap.
    """

    def __init__(self, per_sample: pd.DataFrame, groups: Sequence[str], metrics: Sequence[str] | None = None,
                 *, attribute: str = "group", bootstrap: int = 0, seed: int = 0, level: float = 0.95,
                 convention: str | Convention | None = None):
        self.per_sample = per_sample
        self.metrics = list(metrics) if metrics is not None else metric_columns(per_sample)
        self.summary = fairness_summary(per_sample, attribute, list(groups), self.metrics,
                                        bootstrap=bootstrap, seed=seed, level=level, convention=convention)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], per_sample: pd.DataFrame | None = None) -> MetricFrame:
        """A frame around a metrics.json content already computed (e.g. read back from a run folder)."""
        frame = cls.__new__(cls)
        frame.per_sample = per_sample
        frame.summary = dict(summary)
        overall = frame.summary.get("overall", {})
        frame.metrics = [k for k, v in overall.items() if isinstance(v, (int, float))
                         and k not in ("n", "n_unknown_group") and not k.endswith("_std")]
        return frame

    # -------------------------------------------------------------------------- views

    @property
    def attribute(self) -> str:
        return str(self.summary.get("attribute", ""))

    @property
    def n(self) -> int:
        return int(self.summary["overall"].get("n", 0))

    @property
    def overall(self) -> pd.Series:
        """Mean of each metric over all samples (unknown group included)."""
        return pd.Series({m: self.summary["overall"].get(m, math.nan) for m in self.metrics})

    @property
    def by_group(self) -> pd.DataFrame:
        """Mean of each metric per group present (rows: groups; columns: metrics)."""
        return pd.DataFrame({g: {m: v.get(m, math.nan) for m in self.metrics}
                             for g, v in self.summary["groups"].items()}).T

    @property
    def counts(self) -> pd.Series:
        return pd.Series({g: v["n"] for g, v in self.summary["groups"].items()})

    def group_min(self) -> pd.Series:
        return self.by_group.min()

    def group_max(self) -> pd.Series:
        return self.by_group.max()

    def difference(self) -> pd.Series:
        """max - min of the group means (the delta of metrics.json)."""
        return self.group_max() - self.group_min()

    def ratio(self) -> pd.Series:
        """min / max of the group means (1 = equal)."""
        return self.group_min() / self.group_max()

    @property
    def fairness(self) -> dict:
        """The fairness aggregates (delta, skewness, std, worst, ES forms, ...); empty with fewer than two groups."""
        return self.summary.get("fairness", {})

    @property
    def ci(self) -> dict:
        """The bootstrap intervals (empty unless the frame was built with `bootstrap` > 0)."""
        return self.summary.get("ci", {})

    @property
    def dice(self) -> float:
        """Overall Dice."""
        return float(self.summary["overall"]["dice"])

    def group(self, name: str, metric: str = "dice") -> float:
        return float(self.summary["groups"].get(name, {}).get(metric, math.nan))

    def gap(self, metric: str = "dice") -> float:
        """Max - min of the group means (NaN with fewer than two groups)."""
        return float(self.fairness.get(f"{metric}_delta", math.nan))

    def es(self, metric: str = "dice", form: str = "sum") -> float:
        """Equity-scaled score: 'sum' (Harvard-FairSeg) or 'std' (FairMedFM); NaN with fewer than two groups."""
        if form not in ("sum", "std"):
            raise ValueError(f"ES form '{form}' is not known (expected sum or std)")
        return float(self.fairness.get(f"es_{metric}_{form}", math.nan))

    # -------------------------------------------------------------------------- the file

    def to_dict(self, **extra: Any) -> dict:
        """The metrics.json content, with `extra` top-level entries (split, model, ...)."""
        return {**self.summary, **extra}
