"""Objective terms: unknown groups, each adversarial objective's direction, L_seg per head."""

from __future__ import annotations

import math

import pytest
import torch

from applefair.apple.losses import (
    SegLoss,
    adversarial_term,
    balanced_weights,
    grad_reverse,
    known_accuracy,
    known_ce,
    known_kl_uniform,
)


def test_unknown_groups_are_ignored():
    logits = torch.tensor([[5.0, -5.0], [0.0, 0.0], [1.0, 2.0]])
    groups = torch.tensor([0, -1, -1])
    assert torch.allclose(known_ce(logits, groups), known_ce(logits[:1], groups[:1]))
    none = known_ce(logits, torch.tensor([-1, -1, -1]))
    assert float(none) == 0.0 and none.requires_grad is False


def test_kl_uniform_is_zero_at_chance_and_positive_elsewhere():
    g = torch.tensor([0, 1, 2])
    assert abs(float(known_kl_uniform(torch.zeros(3, 3), g))) < 1e-6
    assert float(known_kl_uniform(torch.tensor([[4.0, 0, 0]] * 3), g)) > 0.5


@pytest.mark.parametrize("objective", ["negce", "kl", "grl"])
def test_objectives_push_the_latent_towards_fooling_the_discriminator(objective):
    """A gradient step on the perturber's adversarial term lowers D's confidence in the true group."""
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 2)
    f = torch.randn(32, 4)
    a = (f[:, 0] > 0).long()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-3.0, 0, 0, 0], [3.0, 0, 0, 0]]))
    z = f.clone().requires_grad_(True)
    inp = grad_reverse(z, 1.0) if objective == "grl" else z
    term = adversarial_term(objective, head(inp), a, alpha=1.0, beta=0.0)
    term.backward()
    before = known_ce(head(f), a)
    after = known_ce(head(f - 0.5 * z.grad), a)
    assert after > before


def test_entropy_term_raises_entropy():
    z = torch.tensor([[3.0, -1.0, 0.0]], requires_grad=True)
    adversarial_term("none", z, torch.tensor([0]), alpha=0.0, beta=1.0).backward()
    p0 = torch.softmax(z.detach(), 1)
    p1 = torch.softmax(z.detach() - 0.5 * z.grad, 1)
    h = lambda p: float(-(p * p.log()).sum())  # noqa: E731
    assert h(p1) > h(p0)


def test_grad_reverse_negates_and_scales():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x, 2.0).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))


def test_seg_loss_heads():
    torch.manual_seed(0)
    y = (torch.rand(2, 1, 8, 8) > 0.5).float()
    perfect = SegLoss("sigmoid")(20 * (2 * y - 1), y)
    wrong = SegLoss("sigmoid")(-20 * (2 * y - 1), y)
    assert perfect.shape == (2,) and float(perfect.max()) < 0.05 and float(wrong.min()) > 1.0
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    multi = SegLoss("softmax")
    assert float(multi(20 * onehot, labels).max()) < 0.05
    assert float(multi(-20 * onehot, labels).min()) > 1.0
    with pytest.raises(ValueError):
        SegLoss("relu")


def test_balanced_weights_equalise_groups():
    groups = torch.tensor([0, 0, 0, 1, -1])
    w = balanced_weights(groups, torch.tensor([0.75, 0.25]))
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    assert float(w[3]) == pytest.approx(3 * float(w[0]))


def test_balanced_accuracy_ignores_group_sizes():
    logits = torch.tensor([[1.0, 0.0]] * 9 + [[1.0, 0.0]])
    groups = torch.tensor([0] * 9 + [1])
    assert known_accuracy(logits, groups) == pytest.approx(0.5)
