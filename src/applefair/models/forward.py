"""The one forward call every trainer and evaluator uses: a batch dict in, logits out."""

from __future__ import annotations

import torch
from torch import nn

from applefair.models.prompts import PromptedModule


def segment(net: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of `net` for a batch dict (image, mask, index, ...): the one call site every
    trainer and evaluator uses, so prompt-based models can derive their prompts here."""
    if hasattr(net, "segment_batch"):  # wrappers needing more than the image (group routing, input perturbers)
        return net.segment_batch(batch)
    prompted = [m for m in net.modules() if isinstance(m, PromptedModule) and m.prompt is not None]
    if not prompted:
        return net(batch["image"])
    for m in prompted:  # prompts from this batch's masks and indices, for this one forward pass
        m.set_batch(batch)
    try:
        return net(batch["image"])
    finally:
        for m in prompted:
            m.set_batch(None)
