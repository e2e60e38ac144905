"""Metric conventions: the scoring rules on which published fairness benchmarks quietly differ.

Two tools can report "Dice" and "ES-Dice" on the same predictions and still disagree, because they
score empty masks differently, define HD95 differently, use another surface-Dice tolerance, or treat a
group absent from the test set differently. A `Convention` fixes all four, so a run can say which it
used (``metrics.json`` records it) and can be scored the way a peer scores it:

- ``applefair`` (the default): every case gets a finite score, a miss is the worst case;
- ``fairseg``: Harvard-FairSeg's TransUNet evaluation (``utils.py::calculate_metric_percase`` and
  ``test_single_image``, ``utils.py::equity_scaled_perf``);
- ``fairmedfm``: the FairMedFM benchmark's segmentation evaluation (``trainers/seg.py``, Dice from
  ``torchmetrics.functional.dice``; ``utils/metrics.py::evaluate_seg``).

docs/metrics.md has the table of differences with the source of every rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

from applefair.errors import InputError

METRICS = ("dice", "iou", "hd95", "nsd")
HD95_DEFINITIONS = ("max_directed", "pooled")
MISSING_GROUP_RULES = ("omit", "nan")
CASES = ("both_empty", "pred_empty", "truth_empty")

NAN = float("nan")
DIAGONAL = "diagonal"  # the image diagonal: the largest distance the image allows (in `spacing` units)
EmptyValue = float | Literal["diagonal"]


@dataclass(frozen=True)
class EmptyRule:
    """The score of one metric when a mask is empty.

    `pred_empty`: the prediction is empty and the truth is not; `truth_empty`: the other way round.
    A value is a number (NaN allowed) or ``"diagonal"`` (for distances: the image diagonal).
    """

    both_empty: EmptyValue
    pred_empty: EmptyValue
    truth_empty: EmptyValue

    def __post_init__(self) -> None:
        for case in CASES:
            v = getattr(self, case)
            if not (v == DIAGONAL or (isinstance(v, (int, float)) and not isinstance(v, bool))):
                raise InputError(f"empty-mask rule {case}={v!r}: expected a number, NaN or '{DIAGONAL}'")

    def to_dict(self) -> dict[str, float | str]:
        """Numbers stay numbers; NaN becomes the string 'nan', so that strict JSON keeps its meaning."""
        return {c: _json_value(getattr(self, c)) for c in CASES}


@dataclass(frozen=True)
class Convention:
    """Empty-mask rules per metric, the HD95 definition, the NSD tolerance and the missing-group rule.

    `hd95`: ``max_directed`` = the larger of the two directed 95th percentiles of surface distances
    (MONAI); ``pooled`` = the 95th percentile of both directions' distances together (medpy).
    `missing_group`: ``omit`` = a group absent from the data is left out of the fairness aggregates;
    ``nan`` = every aggregate that compares groups is NaN, as when a peer averages an empty group.
    """

    name: str
    empty: Mapping[str, EmptyRule]
    hd95: Literal["max_directed", "pooled"]
    nsd_tolerance: float
    missing_group: Literal["omit", "nan"]
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "empty", MappingProxyType(dict(self.empty)))  # a registered rule cannot drift
        if set(self.empty) != set(METRICS):
            raise InputError(f"convention '{self.name}': empty-mask rules needed for exactly {', '.join(METRICS)}")
        if self.hd95 not in HD95_DEFINITIONS:
            raise InputError(f"convention '{self.name}': hd95 '{self.hd95}' is not one of "
                             f"{', '.join(HD95_DEFINITIONS)}")
        if self.missing_group not in MISSING_GROUP_RULES:
            raise InputError(f"convention '{self.name}': missing_group '{self.missing_group}' is not one of "
                             f"{', '.join(MISSING_GROUP_RULES)}")
        tol = self.nsd_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise InputError(f"convention '{self.name}': NSD tolerance {tol!r} must be a finite number >= 0")

    def with_nsd_tolerance(self, tolerance: float | None) -> Convention:
        """The same convention with another NSD tolerance (None keeps this one's), to record an override."""
        return self if tolerance is None else replace(self, nsd_tolerance=float(tolerance))

    def to_dict(self) -> dict:
        """The ``convention`` entry of metrics.json: the name and every rule."""
        return {"name": self.name, "hd95": self.hd95, "nsd_tolerance": float(self.nsd_tolerance),
                "missing_group": self.missing_group,
                "empty_masks": {m: self.empty[m].to_dict() for m in METRICS},
                "source": self.source, "notes": self.notes}


def _json_value(v: EmptyValue) -> float | str:
    if isinstance(v, str):
        return v
    return "nan" if math.isnan(v) else float(v)


def _same(both: EmptyValue, pred: EmptyValue, truth: EmptyValue, metrics=("dice", "iou", "nsd")) -> dict:
    return {m: EmptyRule(both, pred, truth) for m in metrics}


APPLEFAIR = Convention(
    name="applefair",
    empty={**_same(1.0, 0.0, 0.0), "hd95": EmptyRule(0.0, DIAGONAL, DIAGONAL)},
    hd95="max_directed", nsd_tolerance=2.0, missing_group="omit",
    source="applefair: MONAI compute_dice/compute_iou/compute_hausdorff_distance/compute_surface_dice",
    notes="every case is finite: a correct empty prediction scores best, a miss or a false alarm worst "
          "(HD95 = image diagonal); absent groups are left out of the fairness aggregates",
)

FAIRSEG = Convention(
    name="fairseg",
    empty={**_same(0.0, 0.0, 1.0, ("dice", "iou")), "hd95": EmptyRule(0.0, 0.0, 0.0),
           "nsd": EmptyRule(NAN, 0.0, 0.0)},
    hd95="pooled", nsd_tolerance=5.0, missing_group="nan",
    source="Harvard-FairSeg TransUNet/utils.py: calculate_metric_percase (medpy dc/jc/hd95), "
           "test_single_image (MONAI compute_surface_dice, class_thresholds=[5]), equity_scaled_perf",
    notes="an empty prediction scores 0 even when the truth is empty; NSD of two empty masks is NaN (MONAI) "
          "and makes the means it enters NaN; an absent group's mean is NaN and so is ES-Dice",
)

FAIRMEDFM = Convention(
    name="fairmedfm",
    empty={**_same(0.0, 0.0, 0.0, ("dice", "iou")), "hd95": EmptyRule(0.0, DIAGONAL, DIAGONAL),
           "nsd": EmptyRule(1.0, 0.0, 0.0)},
    hd95="max_directed", nsd_tolerance=2.0, missing_group="nan",
    source="FairMedFM trainers/seg.py (torchmetrics.functional.dice(mask, y, ignore_index=0)), "
           "utils/metrics.py::evaluate_seg",
    notes="FairMedFM scores Dice only: 2TP/(2TP+FP+FN) with 0/0 = 0; IoU follows the same rule; HD95 and NSD "
          "follow applefair; groups 0 and 1 are fixed, so an absent group's mean is NaN and so are delta, std "
          "and ES-Dice",
)

CONVENTIONS: Mapping[str, Convention] = MappingProxyType({c.name: c for c in (APPLEFAIR, FAIRSEG, FAIRMEDFM)})
DEFAULT = "applefair"


def get_convention(convention: str | Convention | None = None) -> Convention:
    """A convention by name (None: the default), or the given `Convention` unchanged."""
    if isinstance(convention, Convention):
        return convention
    name = DEFAULT if convention is None else str(convention).strip().lower()
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise InputError(f"unknown metric convention '{convention}'; expected one of "
                         f"{', '.join(sorted(CONVENTIONS))}") from None
