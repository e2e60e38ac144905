"""Run a segmentor over a split and score every sample."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.metrics.segmentation import per_sample_metrics
from applefair.models.registry import segment


@torch.no_grad()
def predict_scores(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec,
                   batch_size: int = 32, device: str = "cpu") -> pd.DataFrame:
    """Per-sample table: id, group (name or 'unknown'), dice, iou."""
    was = model.training
    model.eval()
    rows = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = segment(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        scores = per_sample_metrics(torch.sigmoid(logits).cpu(), batch["mask"])
        for j, idx in enumerate(batch["index"].tolist()):
            rows.append({"id": dataset.ids[idx], "group": groups.name(int(batch["group"][j])),
                         "dice": float(scores["dice"][j]), "iou": float(scores["iou"][j])})
    model.train(was)
    return pd.DataFrame(rows, columns=["id", "group", "dice", "iou"])
