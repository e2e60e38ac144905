"""score: softmax heads are scored per class, and site latents are pooled per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from applefair.data.groups import GroupSpec
from applefair.metrics.evaluate import score


class _LabelData(torch.utils.data.Dataset):
    """Four 16x16 label maps (0 background, 1 disc, 2 cup) with groups A, B, A, unknown."""

    def __init__(self):
        self.masks = torch.zeros(4, 1, 16, 16)
        self.masks[:, :, 2:12, 2:12] = 1
        self.masks[:, :, 5:9, 5:9] = 2
        self.groups = [0, 1, 0, -1]
        self.ids = ["a", "b", "c", "d"]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": self.masks[i].clone(), "mask": self.masks[i], "group": self.groups[i], "index": i}


class _Oracle(nn.Module):
    """Turns the label map it is given back into 3-class logits (a perfect softmax segmentor)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Identity()

    def forward(self, x):
        z = self.encoder(x)
        return 10.0 * nn.functional.one_hot(z[:, 0].long(), 3).permute(0, 3, 1, 2).float()


def test_softmax_head_scored_per_class_and_latents_captured():
    groups = GroupSpec("g", ["A", "B"])
    model = _Oracle()
    scored = score(model, _LabelData(), groups, metrics=("dice", "hd95"), capture={"encoder": model.encoder},
                   class_names=["disc", "cup"])
    frame, latents = scored.per_sample, scored.latents
    assert list(frame["id"]) == ["a", "b", "c", "d"]
    assert list(frame["group"]) == ["A", "B", "A", "unknown"]
    assert {"dice", "dice_disc", "dice_cup", "hd95_disc", "hd95_cup"} <= set(frame.columns)
    assert frame["dice_cup"].tolist() == pytest.approx([1.0] * 4)
    assert frame["hd95"].tolist() == pytest.approx([0.0] * 4)
    assert latents["encoder"].shape == (4, 2)  # per-channel mean and std of a 1-channel latent
