"""Perturbers and discriminator: shapes, identity at step 0, any latent layout, any group count."""

from __future__ import annotations

import pytest
import torch

from applefair.apple.discriminator import Discriminator
from applefair.apple.perturber import ConvPerturber, Perturber, build_perturber


@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (2, 16, 7, 5), (2, 16, 1, 1), (2, 16, 13, 13), (2, 9, 16)])
@pytest.mark.parametrize("kind", ["unet", "conv"])
def test_perturber_keeps_shape_and_starts_at_zero(shape, kind):
    torch.manual_seed(0)
    channels = shape[-1] if len(shape) == 3 else shape[1]
    g = build_perturber({"kind": kind, "channels": channels, "width": 8, "global_branch": True})
    f = torch.randn(*shape)
    d = g(f)
    assert d.shape == f.shape
    assert torch.count_nonzero(d) == 0  # zero-initialised output: f_p == f_o before training


def test_unet_perturber_is_the_paper_shape():
    g = Perturber(64, width=32)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    # 3 downsampling stages (32/64/128), 4 residual blocks of 2 convs, 3 upsampling stages, output conv
    assert [c.out_channels for c in (g.d1[0], g.d2[0], g.d3[0])] == [32, 64, 128]
    assert sum(c.stride == (2, 2) for c in convs) == 3
    assert len(g.res) == 4
    assert g.out.out_channels == 64


def test_perturber_learns_a_nonzero_change_for_tokens():
    """Token latents (B, N, C) with N not a square also get a trainable, shape-preserving map."""
    torch.manual_seed(0)
    g = ConvPerturber(12, width=8)
    f = torch.randn(4, 10, 12)
    opt = torch.optim.SGD(g.parameters(), lr=0.5)
    for _ in range(3):
        loss = (g(f) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert g(f).shape == f.shape and g(f).abs().sum() > 0


@pytest.mark.parametrize("groups", [2, 3, 6])
@pytest.mark.parametrize("opts", [{}, {"dropout": 0.3, "spectral_norm": True}, {"pooling": "mean"}])
def test_discriminator_any_number_of_groups_and_sites(groups, opts):
    torch.manual_seed(0)
    d = Discriminator([16, 32], groups, hidden=32, **opts)
    logits = d([torch.randn(5, 16, 7, 7), torch.randn(5, 9, 32)])
    assert logits.shape == (5, groups)
    blocks = [m for m in d.mlp if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(blocks) == 4  # input standardisation + three Linear+BN+ReLU blocks


def test_discriminator_rejects_one_group():
    with pytest.raises(ValueError, match="at least 2"):
        Discriminator(8, 1)


def test_auto_perturber_is_sized_to_the_deployed_model():
    """`perturber: auto`: the paper's U shape, narrowed to fit the budget where a narrower one fits, else width 32
    (never the two-conv perturber, which cost most of the effect on a small model)."""
    from applefair.apple.patch import AUTO_CANDIDATES, perturbers_for
    from applefair.models.registry import create_segmentor

    def params(perts):
        return sum(p.numel() for m in perts.values() for p in m.parameters())

    assert {k for k, _ in AUTO_CANDIDATES} == {"unet"} and AUTO_CANDIDATES[0] == ("unet", 32)
    net, spec = create_segmentor("unet", seed=0)  # the default U-Net, 0.40 M parameters
    deployed = sum(p.numel() for p in net.parameters())
    x = torch.rand(2, 1, 64, 64)

    def chosen(ratio):
        auto = perturbers_for(net, [spec.site], x, kind="auto", max_params_ratio=ratio, num_res_blocks=4)
        return auto, (auto[spec.site].spec()["kind"], auto[spec.site].spec()["width"])

    sizes = {w: params(perturbers_for(net, [spec.site], x, w, "unet", num_res_blocks=4)) for _, w in AUTO_CANDIDATES}
    assert sizes[32] > sizes[16] > sizes[8]
    # no U shape within 5% of this small model: width 32, the effect first
    assert sizes[8] > 0.05 * deployed and chosen(0.05)[1] == ("unet", 32)
    # a budget that holds width 16 but not 32 gives width 16 (the widest that fits), within the budget
    ratio = (sizes[16] + 1) / deployed
    auto, pick = chosen(ratio)
    assert pick == ("unet", 16) and params(auto) <= ratio * deployed
    # a generous budget gives the paper's U shape of width 32
    assert chosen(10.0)[1] == ("unet", 32)
    # trying the candidates leaves the RNG alone: auto initialises exactly what naming its choice does
    for ratio, width in ((0.05, 32), ((sizes[16] + 1) / deployed, 16)):
        torch.manual_seed(7)
        auto = chosen(ratio)[0]
        torch.manual_seed(7)
        named = perturbers_for(net, [spec.site], x, width, "unet", num_res_blocks=4)
        assert all(torch.equal(a, b) for a, b in zip(auto[spec.site].state_dict().values(),
                                                     named[spec.site].state_dict().values(), strict=True))
