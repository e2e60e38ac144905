"""Per-sample segmentation metrics via MONAI: Dice, IoU, HD95 and normalised surface Dice.

How empty masks are scored, which HD95 is meant and the default NSD tolerance depend on the metric
convention (`conventions.py`; default ``applefair``):

- truth and prediction both empty: Dice = IoU = NSD = 1 and HD95 = 0 (a correct "nothing there");
- exactly one of them empty: Dice = IoU = NSD = 0 and HD95 = the image diagonal (the largest
  distance the image allows, in the same units as `spacing`), so that means stay finite and a
  miss counts as the worst case instead of silently dropping out as NaN.

Masks are 2-D (B, C, H, W) or 3-D (B, C, D, H, W). Distances (HD95, the NSD tolerance, the diagonal)
are in pixels, or in the units of `spacing` (mm for NIfTI volumes), which may differ per sample.

``fairseg`` and ``fairmedfm`` score as those benchmarks' own code does (docs/metrics.md).
Multi-class masks are scored per foreground class (``dice_<class>``...); the unsuffixed
column (``dice``) is then the mean over foreground classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice
from monai.metrics.utils import get_edge_surface_distance

from applefair.metrics.conventions import CASES, DIAGONAL, METRICS, Convention, get_convention

__all__ = ["HIGHER_IS_BETTER", "METRICS", "metric_base", "per_sample_metrics", "per_sample_spacing", "to_onehot"]

HIGHER_IS_BETTER = {"dice": True, "iou": True, "nsd": True, "hd95": False}


def metric_base(column: str) -> str:
    """'dice_cup' -> 'dice'; 'hd95' -> 'hd95'; unknown names are returned unchanged."""
    for m in METRICS:
        if column == m or column.startswith(m + "_"):
            return m
    return column


def to_onehot(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary foreground channels (B, K, H, W) of prediction and truth, background excluded.

    `pred` is (B, 1, H, W) probabilities (binary, thresholded) or (B, C, H, W) scores with C > 1
    (multi-class, argmax). `target` is (B, 1, H, W) binary or integer labels, or (B, C, H, W) one-hot.
    Volumes (B, C, D, H, W) the same way.
    """
    if pred.ndim not in (4, 5) or target.ndim != pred.ndim:
        raise ValueError(f"expected (B, C, H, W) or (B, C, D, H, W) tensors, got pred {tuple(pred.shape)}, "
                         f"target {tuple(target.shape)}")
    c = pred.shape[1]
    if c == 1:
        return (pred > threshold).float(), (target > 0.5).float()
    last = list(range(1, pred.ndim - 1))  # one_hot puts the class last: move it to dim 1
    p = F.one_hot(pred.argmax(1), c).permute(0, pred.ndim - 1, *last).float()
    if target.shape[1] == 1:
        labels = target[:, 0].round().long().clamp(0, c - 1)
        t = F.one_hot(labels, c).permute(0, pred.ndim - 1, *last).float()
    else:
        t = (target > 0.5).float()
    return p[:, 1:], t[:, 1:]


def per_sample_metrics(pred: torch.Tensor, target: torch.Tensor, *,
                       metrics: Sequence[str] = ("dice", "iou"),
                       class_names: Sequence[str] | None = None,
                       spacing: float | Sequence[float] | Sequence[Sequence[float]] | torch.Tensor | None = None,
                       nsd_tolerance: float | None = None,
                       threshold: float = 0.5,
                       convention: str | Convention | None = None) -> dict[str, torch.Tensor]:
    """Per-sample scores, each a (B,) tensor.

    `pred`: (B, 1, H, W) probabilities or (B, C, H, W) class scores (volumes: (B, C, D, H, W)); `target`:
    see `to_onehot`. `metrics` chooses among dice, iou, hd95 (95th percentile Hausdorff distance, in pixels
    unless `spacing` is given) and nsd (normalised surface Dice with `nsd_tolerance` in the same units; None:
    the convention's tolerance). `spacing`: one number, one per spatial axis, or one such row per sample
    ((B, ndim), e.g. a batch's ``spacing``); the empty-mask diagonal is then each sample's own.
    `convention` (name or `Convention`, default ``applefair``) fixes the empty-mask scores and the HD95
    definition. For multi-class input the result also holds ``<metric>_<class>`` per foreground class.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; expected some of {METRICS}")
    conv = get_convention(convention)
    tol = conv.nsd_tolerance if nsd_tolerance is None else float(nsd_tolerance)
    p, t = to_onehot(pred, target, threshold)
    k = p.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(1, k + 1)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} foreground classes")
    p_empty = p.flatten(2).sum(-1) == 0  # (B, K)
    t_empty = t.flatten(2).sum(-1) == 0
    cases = {"both_empty": p_empty & t_empty, "pred_empty": p_empty & ~t_empty, "truth_empty": t_empty & ~p_empty}
    spacing = per_sample_spacing(spacing, p.shape[0], p.ndim - 2)
    diag = torch.tensor([_diagonal(p.shape[2:], sp) for sp in spacing] if spacing is not None
                        else [_diagonal(p.shape[2:], None)] * p.shape[0]).reshape(-1, 1).expand(p.shape[0], k)
    scores: dict[str, torch.Tensor] = {}
    for m in metrics:
        s = _one_metric(m, p, t, spacing, tol, conv.hd95)  # (B, K)
        rule = conv.empty[m]
        for case in CASES:
            v = getattr(rule, case)
            s[cases[case]] = diag[cases[case]].to(s.dtype) if v == DIAGONAL else float(v)
        scores[m] = s
    out: dict[str, torch.Tensor] = {}
    for m, s in scores.items():
        out[m] = s.mean(1)
        if k > 1:
            for j, name in enumerate(names):
                out[f"{m}_{name}"] = s[:, j]
    return out


def _one_metric(m: str, p: torch.Tensor, t: torch.Tensor, spacing, tol: float, hd95: str) -> torch.Tensor:
    """(B, K) raw scores; entries with an empty mask are overwritten by the caller's convention."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks; the convention handles them
        if m == "dice":
            s = compute_dice(p, t, include_background=True, ignore_empty=False)
        elif m == "iou":
            s = compute_iou(p, t, include_background=True, ignore_empty=False)
        elif m == "hd95" and hd95 == "pooled":
            s = _pooled_hd95(p, t, spacing)
        elif m == "hd95":
            s = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)
        else:
            s = compute_surface_dice(p, t, class_thresholds=[tol] * p.shape[1], include_background=True,
                                     spacing=spacing)
    return s.float().reshape(p.shape[0], p.shape[1]).clone()


def _pooled_hd95(p: torch.Tensor, t: torch.Tensor, spacing) -> torch.Tensor:
    """95th percentile of the surface distances of both directions pooled (medpy's ``hd95``).

    MONAI finds the edges (binary erosion, as medpy) and both directed distance sets; only the
    percentile is taken over their union instead of per direction.
    """
    out = torch.full(p.shape[:2], float("nan"), dtype=torch.float64)
    for b, c in np.ndindex(*p.shape[:2]):
        if not (p[b, c].any() and t[b, c].any()):
            continue  # an empty mask: scored by the convention
        _, dists, _ = get_edge_surface_distance(p[b, c].bool(), t[b, c].bool(),
                                                spacing=None if spacing is None else spacing[b], symmetric=True)
        out[b, c] = torch.quantile(torch.cat([d.reshape(-1) for d in dists]).double(), 0.95)
    return out


def per_sample_spacing(spacing, batch: int, ndim: int) -> list[list[float]] | None:
    """`spacing` as one list of `ndim` numbers per sample (None stays None): a number, one per axis, or one
    row per sample ((B, ndim) tensor, array or nested sequence)."""
    if spacing is None:
        return None
    arr = np.asarray(spacing.detach().cpu() if isinstance(spacing, torch.Tensor) else spacing, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full((batch, ndim), float(arr))
    elif arr.ndim == 1 and len(arr) == ndim:
        arr = np.tile(arr, (batch, 1))
    if arr.shape != (batch, ndim) or not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"spacing of shape {arr.shape}: expected one positive number, {ndim} (one per axis) or "
                         f"({batch}, {ndim}) (one row per sample)")
    return arr.tolist()


def _diagonal(shape: Sequence[int], spacing) -> float:
    if spacing is None:
        sp = [1.0] * len(shape)
    elif isinstance(spacing, (int, float)):
        sp = [float(spacing)] * len(shape)
    else:
        sp = [float(v) for v in spacing]
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp, strict=True)))
