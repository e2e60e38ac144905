"""A small fairlearn-MetricFrame-like view of per-sample scores.

fairlearn's MetricFrame is built for classification metrics over (y_true, y_pred); here the
per-sample segmentation scores already exist, so the frame only groups and summarises them, with
the bootstrap CIs of `fairness_summary` attached.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from applefair.metrics.fairness import fairness_summary, metric_columns


class GroupMetricFrame:
    """overall / by_group / difference / ratio / group_min / group_max / ci of per-sample scores.

    Example: ``GroupMetricFrame(per_sample, ["F", "M"]).difference()["dice"]`` is the Dice gap.
    """

    def __init__(self, per_sample: pd.DataFrame, groups: Sequence[str], metrics: Sequence[str] | None = None,
                 *, attribute: str = "group", bootstrap: int = 0, seed: int = 0, level: float = 0.95):
        self.metrics = list(metrics) if metrics is not None else metric_columns(per_sample)
        self.summary = fairness_summary(per_sample, attribute, list(groups), self.metrics,
                                        bootstrap=bootstrap, seed=seed, level=level)

    @property
    def overall(self) -> pd.Series:
        """Mean of each metric over all samples (unknown group included)."""
        return pd.Series({m: self.summary["overall"][m] for m in self.metrics})

    @property
    def by_group(self) -> pd.DataFrame:
        """Mean of each metric per group present (rows: groups; columns: metrics)."""
        return pd.DataFrame({g: {m: v[m] for m in self.metrics} for g, v in self.summary["groups"].items()}).T

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
    def ci(self) -> dict:
        """The bootstrap intervals (empty unless `bootstrap` > 0)."""
        return self.summary.get("ci", {})
