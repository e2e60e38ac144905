"""FEBS: the published min-over-all-groups defect gets stuck; the fixed weights do not."""

from __future__ import annotations

import torch

from applefair.baselines.febs import febs_loss, febs_weights


def _batch(groups: list[int]):
    torch.manual_seed(0)
    y = torch.zeros(len(groups), 1, 16, 16)
    y[:, :, 4:12, 4:12] = 1.0
    return y, torch.tensor(groups)


def test_weights_of_present_groups_only():
    losses = torch.tensor([0.0, 0.4])  # group 0 is absent from the batch (its loss slot holds 0)
    present = torch.tensor([False, True])
    assert torch.all(febs_weights(losses, present, naive=True) == 0)  # the defect: every weight 0
    fixed = febs_weights(losses, present)
    assert fixed[1] > 0.7  # the only present group is the best one: tanh(1)
    both = febs_weights(torch.tensor([0.2, 0.4]), torch.tensor([True, True]))
    assert both[0] > both[1] > 0  # the worse group gets the smaller map, hence the larger Dice loss


def test_perfect_group_does_not_zero_the_others():
    w = febs_weights(torch.tensor([0.0, 0.3]), torch.tensor([True, True]))
    assert torch.all(w > 0)


def test_naive_gets_stuck_when_a_group_is_missing_and_fixed_learns():
    """Batches that hold only group 1 (as happens with a rare group): the naive Dice term sits at 1 with
    zero gradient, so a Dice-only model never moves; the fixed one learns."""
    y, groups = _batch([1, 1, 1, 1])
    x = y + 0.3 * torch.randn_like(y)
    results = {}
    for naive in (True, False):
        torch.manual_seed(1)
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        start = [p.detach().clone() for p in net.parameters()]
        losses = []
        for _ in range(30):
            loss, w = febs_loss(net(x), y, groups, num_groups=2, ce_weight=0.0, dice_weight=1.0, naive=naive)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        moved = max(float((p - s).abs().max()) for p, s in zip(net.parameters(), start, strict=True))
        results[naive] = (losses, moved, w)
    naive_losses, naive_moved, naive_w = results[True]
    fixed_losses, fixed_moved, fixed_w = results[False]
    assert torch.all(naive_w == 0)
    assert min(naive_losses) > 0.999 and naive_moved == 0.0
    assert fixed_w[1] > 0 and fixed_moved > 0
    assert fixed_losses[-1] < fixed_losses[0] - 0.05


def test_unknown_group_samples_are_unscaled():
    y, groups = _batch([-1, -1])
    logits = torch.full_like(y, 4.0) * (2 * y - 1)
    loss, w = febs_loss(logits, y, groups, num_groups=2, ce_weight=0.0)
    assert torch.all(w == 1) and float(loss) < 0.2
