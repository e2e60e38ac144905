"""Objective terms: unknown groups, each adversarial objective's direction, L_seg per head."""

from __future__ import annotations

import math

import pytest
import torch

from applefair.apple.losses import (
    SegLoss,
    adversarial_term,
    balanced_weights,
    entropy_term,
    grad_reverse,
    group_mean_gap,
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
    term = adversarial_term(objective, head(inp), a, alpha=1.0)
    term.backward()
    before = known_ce(head(f), a)
    after = known_ce(head(f - 0.5 * z.grad), a)
    assert after > before


def test_entropy_term_raises_entropy():
    z = torch.tensor([[3.0, -1.0, 0.0]], requires_grad=True)
    entropy_term(z, torch.tensor([0]), beta=1.0).backward()
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


def test_group_mean_gap_reads_a_shift_and_cannot_be_shrunk_by_inflating_the_features():
    """A shift of d reference standard deviations in one of P features reads as about d^2 / P; scaling
    the features up (what a perturber could do) scales the read up, not down, against a fixed reference."""
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([0] * 4 + [1] * 12)  # a small minority, as in a batch of 16
    same, shifted, inflated = [], [], []
    for _ in range(500):
        x = torch.randn(16, 8, generator=gen)
        same.append(float(group_mean_gap(x, a, 2, reference=x)))
        y = x.clone()
        y[a == 0, 0] += 2.0
        shifted.append(float(group_mean_gap(y, a, 2, reference=x)))
        inflated.append(float(group_mean_gap(10 * y, a, 2, reference=x)))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    noise = 1 / 4 + 1 / 12  # each feature's sampling noise of the two means, in reference units
    assert abs(mean(same) - noise) < 0.05
    assert abs(mean(shifted) - (noise + 4 / 8)) < 0.1
    assert mean(inflated) > 50 * mean(shifted)


def test_group_mean_gap_descends_to_equal_means_without_collapsing_the_spread():
    torch.manual_seed(0)
    a = torch.tensor([0] * 8 + [1] * 24)
    base = torch.randn(32, 4)
    x = (base + 3.0 * a[:, None]).requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        group_mean_gap(x, a, 2).backward()
        opt.step()
    x = x.detach()
    gap = (x[a == 0].mean(0) - x[a == 1].mean(0)).abs().max()
    spread = torch.stack([x[a == g].std(0) for g in (0, 1)]).min()
    assert gap < 0.1 * 3.0 and spread > 0.5 * float(base.std(0).min())


def test_group_mean_gap_skips_what_it_cannot_estimate():
    x = torch.randn(6, 3, requires_grad=True)
    assert float(group_mean_gap(x, torch.tensor([0, 1, 1, 1, 1, -1]), 2).detach()) == 0.0  # one sample in group 0
    assert float(group_mean_gap(x, torch.tensor([-1] * 6), 2).detach()) == 0.0
    three = group_mean_gap(x, torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    three.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
