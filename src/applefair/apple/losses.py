"""APPLE's objective terms.

L_D = CE(D_p(sg(f_p)), a)
L_G = L_seg - alpha * CE(D_p(f_p), a) - beta * H(softmax(D_p(f_p))) + lambda * ||G_p(f_o)||^2
Samples with an unknown group (a = -1) contribute to L_seg only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def known_ce(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over samples with a known group (0 if none)."""
    keep = groups >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], groups[keep])


def known_entropy(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the discriminator's softmax over samples with a known group."""
    keep = groups >= 0
    if not keep.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[keep], dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def known_accuracy(logits: torch.Tensor, groups: torch.Tensor) -> float:
    keep = groups >= 0
    if not keep.any():
        return float("nan")
    return float((logits[keep].argmax(1) == groups[keep]).float().mean())
