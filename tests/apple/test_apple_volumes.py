"""APPLE's players in 3-D: perturbers and discriminators on (B, C, D, H, W) latents, sized from a 3-D U-Net,
saved and attached as a patch; the 2-D networks keep their layers and patch headers."""

from __future__ import annotations

import pytest
import torch

from applefair.apple.discriminator import Discriminator, SpatialDiscriminator, build_discriminators
from applefair.apple.patch import PatchedSegmentor, attach, perturbers_for, save_patch
from applefair.apple.perturber import ConvPerturber, Perturber, build_perturber, latent_dims, to_grid
from applefair.engine.io import state_dict_hash
from applefair.models import create_segmentor


@pytest.mark.parametrize("shape", [(2, 6, 8, 8, 8), (2, 6, 5, 7, 3), (2, 6, 1, 1, 1)])
@pytest.mark.parametrize("kind", ["unet", "conv"])
def test_3d_perturbers_keep_the_shape_start_at_zero_and_learn(shape, kind):
    torch.manual_seed(0)
    g = build_perturber({"kind": kind, "channels": 6, "width": 4, "global_branch": True, "normalize": True,
                         "dims": 3})
    assert all(not isinstance(m, torch.nn.Conv2d) for m in g.modules())
    assert any(isinstance(m, torch.nn.Conv3d) for m in g.modules())
    f = torch.randn(*shape)
    assert g(f).shape == f.shape and torch.count_nonzero(g(f)) == 0  # f_p == f_o before training
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    for _ in range(2):
        loss = (g(f) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert g(f).abs().sum() > 0
    again = build_perturber(g.spec())
    assert g.spec()["dims"] == 3 and again.spec() == g.spec()
    again.load_state_dict(g.state_dict())
    assert torch.equal(again.eval()(f), g.eval()(f))


def test_2d_perturbers_and_their_specs_are_unchanged():
    for g in (Perturber(8, width=4), ConvPerturber(8, width=4)):
        assert "dims" not in g.spec()  # 2-D patch headers read as before
        assert all(not isinstance(m, (torch.nn.Conv3d, torch.nn.BatchNorm3d)) for m in g.modules())
    assert latent_dims((2, 8, 4, 4)) == 2 and latent_dims((2, 9, 8)) == 2 and latent_dims((2, 8, 4, 4, 4)) == 3
    f = torch.randn(2, 8, 3, 4, 5)
    assert to_grid(f)[0] is f  # 3-D maps pass through; tokens are laid on a 2-D grid
    with pytest.raises(ValueError, match="dims=4"):
        Perturber(8, width=4, dims=4)


def test_3d_discriminators_read_volume_latents():
    torch.manual_seed(0)
    latents = [torch.randn(4, 6, 4, 4, 4), torch.randn(4, 10, 2, 2, 2)]
    assert Discriminator([6, 10], 3, hidden=16)(latents).shape == (4, 3)
    spatial = SpatialDiscriminator([6, 10], 2, hidden=16, width=8, dims=3)
    assert spatial(latents).shape == (4, 2)
    assert sum(isinstance(m, torch.nn.Conv3d) for m in spatial.modules()) == 4
    ensemble = build_discriminators("spatial", [6, 10], 2, count=2, dims=3, hidden=16, pooling="meanstd")
    assert all(d(latents).shape == (4, 2) for d in ensemble)


def test_a_3d_patch_is_sized_from_the_volume_latents_and_round_trips(tmp_path):
    net, spec = create_segmentor("unet3d", tiny=True, seed=0)
    net.eval()
    before = state_dict_hash(net)
    x = torch.rand(2, 1, 16, 16, 16)
    sites = [spec.site, *spec.skip_sites]
    perturbers = perturbers_for(net, sites, x, width=4, kind="conv")
    assert all(p.spec()["dims"] == 3 for p in perturbers.values())
    patched = PatchedSegmentor(net, perturbers)
    with torch.no_grad():
        for p in patched.perturbers.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a trained-looking patch: not the identity
        out = patched(x)
        with patched.disabled():
            plain = patched(x)
    assert not torch.equal(out, plain)
    assert all(patched.latents[s][1].dim() == 5 for s in sites)
    save_patch(tmp_path / "patch.safetensors", patched, {"deployed_weights_sha256": before})
    patched.remove()
    fresh, _ = create_segmentor("unet3d", tiny=True, seed=0)
    again = attach(fresh.eval(), tmp_path / "patch.safetensors")
    with torch.no_grad():
        assert torch.equal(again(x), out)
    again.remove()
    assert state_dict_hash(net) == before == state_dict_hash(fresh)
