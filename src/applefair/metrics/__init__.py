"""Per-sample segmentation metrics, group fairness aggregates with CIs, paired comparison, leakage."""

from applefair.metrics.compare import aggregate_comparisons, aggregate_seeds, paired_comparison
from applefair.metrics.conventions import CONVENTIONS, Convention, EmptyRule, get_convention
from applefair.metrics.fairness import fairness_summary, group_fairness
from applefair.metrics.frame import GroupMetricFrame
from applefair.metrics.segmentation import METRICS, per_sample_metrics

__all__ = ["CONVENTIONS", "METRICS", "Convention", "EmptyRule", "GroupMetricFrame", "aggregate_comparisons",
           "aggregate_seeds", "fairness_summary", "get_convention", "group_fairness", "paired_comparison",
           "per_sample_metrics"]
