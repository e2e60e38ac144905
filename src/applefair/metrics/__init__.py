"""Per-sample segmentation metrics and group fairness aggregates."""

from applefair.metrics.fairness import fairness_summary
from applefair.metrics.segmentation import per_sample_metrics

__all__ = ["fairness_summary", "per_sample_metrics"]
