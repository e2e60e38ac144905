"""Per-sample segmentation metrics, group fairness aggregates with CIs, paired comparison, leakage, the metric
conventions of the peers, and the evaluation primitive every use case scores models with."""

from applefair.metrics.compare import aggregate_comparisons, aggregate_seeds, paired_comparison
from applefair.metrics.conventions import CONVENTIONS, Convention, EmptyRule, get_convention
from applefair.metrics.evaluate import Evaluation, Scored, score, summarise
from applefair.metrics.fairness import fairness_summary, group_fairness
from applefair.metrics.frame import MetricFrame
from applefair.metrics.segmentation import METRICS, per_sample_metrics

__all__ = ["CONVENTIONS", "METRICS", "Convention", "EmptyRule", "Evaluation", "MetricFrame", "Scored",
           "aggregate_comparisons", "aggregate_seeds", "fairness_summary", "get_convention", "group_fairness",
           "paired_comparison", "per_sample_metrics", "score", "summarise"]
