"""Per-sample Dice and IoU via MONAI.

Convention for empty masks (as Harvard-FairSeg): if both the ground truth and the
prediction are empty the sample scores Dice = IoU = 1; empty truth with a non-empty
prediction scores 0.
"""

from __future__ import annotations

import torch
from monai.metrics import compute_dice, compute_iou


def per_sample_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """`pred`, `target`: binary (B, 1, H, W). Returns {'dice': (B,), 'iou': (B,)}."""
    pred = (pred > 0.5).float()
    target = (target > 0.5).float()
    dice = compute_dice(pred, target, include_background=True, ignore_empty=False)
    iou = compute_iou(pred, target, include_background=True, ignore_empty=False)
    return {"dice": dice.reshape(-1), "iou": iou.reshape(-1)}
