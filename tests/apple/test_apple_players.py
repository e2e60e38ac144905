"""The players APPLE can field: spatial and ensembled discriminators reading every decoder input, perturbers on
every decoder input, population normalisation, distribution matching; and the entropy term's sign under GRL."""

from __future__ import annotations

import math

import pytest
import torch

from applefair.apple import AppleConfig, train_apple
from applefair.apple.discriminator import Discriminator, SpatialDiscriminator, build_discriminators, reset
from applefair.apple.losses import group_distribution_gap, known_ce, known_entropy
from applefair.apple.perturber import ConvPerturber, PopulationNorm, build_perturber
from applefair.engine.io import state_dict_hash

# one game unless a test is of restarts
FAST = {"perturber": "conv", "width": 8, "d_hidden": 16, "batch_size": 8, "restarts": 1}


def test_the_entropy_term_raises_the_discriminators_entropy_under_gradient_reversal():
    """With `objective: grl` and beta > 0, a perturber step on the loss must raise D_p's entropy, and D_p's
    weights must get nothing from the entropy term (the old code ran it through the reversal: the signs flipped)."""
    from types import SimpleNamespace

    from applefair.apple.game import adversary_loss
    from applefair.engine.precision import Precision

    torch.manual_seed(0)
    disc = torch.nn.ModuleList([Discriminator(4, 2, hidden=8, pooling="mean")])
    f = torch.randn(16, 4, 3, 3) + torch.arange(16).remainder(2)[:, None, None, None] * 0.7
    a = torch.arange(16).remainder(2)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(30):  # a fairly confident D_p, whose entropy a perturber can raise
        opt.zero_grad()
        known_ce(disc[0]([f]), a).backward()
        opt.step()
    disc.eval().zero_grad()
    cfg = AppleConfig(objective="grl", alpha=1e-3, beta=1.0)
    game = SimpleNamespace(cfg=cfg, steps=list(disc), discs=disc, amp=Precision(torch.device("cpu")))
    z = f.clone().requires_grad_(True)
    loss, _ = adversary_loss(game, [z], a)
    loss.backward()
    with torch.no_grad():
        h0 = float(known_entropy(disc[0]([f]), a))
        h1 = float(known_entropy(disc[0]([f - 0.5 * z.grad]), a))
    assert h0 < 0.6 and h1 > h0  # the perturber's step raises D_p's entropy
    # D_p's weights: only the (tiny, alpha-scaled) CE through the reversal, no entropy gradient
    grads = torch.cat([p.grad.flatten() for p in disc.parameters() if p.grad is not None])
    disc.zero_grad()
    known_ce(disc[0]([f]), a).backward()
    ce_only = torch.cat([p.grad.flatten() for p in disc.parameters() if p.grad is not None])
    assert torch.allclose(grads, ce_only, atol=1e-6)


def test_a_spatial_discriminator_reads_a_cue_that_pooling_hides():
    """One group has a bright 2x2 patch at a fixed place, the other the same patch at another place: every
    per-channel mean and std is equal, so a pooled D_p cannot separate them; a spatial one learns to."""
    torch.manual_seed(0)

    def latents(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.randn(n, 2, 8, 8) * 0.1
        a = torch.arange(n).remainder(2)
        f[a == 0, :, 1:3, 1:3] += 3.0
        f[a == 1, :, 5:7, 5:7] += 3.0
        return f, a

    (f, a), (held, held_a) = latents(64), latents(64)
    accs = {}
    for name, d in (("pooled", Discriminator(2, 2, hidden=16)), ("spatial", SpatialDiscriminator(2, 2, hidden=16))):
        opt = torch.optim.Adam(d.parameters(), lr=1e-2)
        for _ in range(150):
            opt.zero_grad()
            known_ce(d([f]), a).backward()
            opt.step()
        d.eval()
        with torch.no_grad():
            accs[name] = float((d([held]).argmax(1) == held_a).float().mean())  # on latents it never saw
    assert accs["spatial"] > 0.95 and accs["pooled"] < 0.8, accs


def test_an_ensemble_is_fresh_models_and_reset_gives_new_weights():
    discs = build_discriminators("spatial", [4, 8], 3, count=3, hidden=8)
    assert len(discs) == 3
    first = [p.clone() for p in discs[0].parameters()]
    assert not all(torch.equal(p, q) for p, q in zip(first, discs[1].parameters(), strict=True))
    reset(discs[0])
    assert not all(torch.equal(p, q) for p, q in zip(first, discs[0].parameters(), strict=True))
    with pytest.raises(ValueError, match="not known"):
        build_discriminators("deep", [4], 2)


def test_population_norm_is_the_identity_until_finished_then_normalises_each_image():
    torch.manual_seed(0)
    norm = PopulationNorm(3).train()
    x = torch.randn(10, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None] + 4.0
    assert torch.equal(norm(x), x)  # gathering, not normalising
    norm.finish()
    y = norm.eval()(x)
    mu, sd = y.flatten(2).mean(-1), y.flatten(2).std(-1, unbiased=False)
    assert torch.allclose(mu, norm.mean.expand_as(mu), atol=1e-4)  # every image at the population's mean
    assert torch.allclose(sd, norm.std.expand_as(sd), atol=1e-3)
    # inside a perturber: the patch's perturbation is the normalisation (its residual starts at zero)
    p = ConvPerturber(3, width=4, normalize=True)
    p.norm.load_state_dict(norm.state_dict())
    assert torch.allclose(x + p.eval()(x), y, atol=1e-5)
    again = build_perturber(p.spec())
    again.load_state_dict(p.state_dict())
    assert again.spec()["normalize"] and torch.allclose(again(x), p(x))
    # volumes: the same normalisation over 3-D positions
    vol = PopulationNorm(3).train()
    v = torch.randn(4, 3, 4, 5, 5) * 2.0 + 1.0
    vol(v)
    vol.finish()
    w = vol.eval()(v)
    assert torch.allclose(w.flatten(2).mean(-1), vol.mean.expand(4, 3), atol=1e-4)


def test_the_distribution_gap_is_zero_for_one_distribution_and_grows_with_a_shift():
    torch.manual_seed(0)
    a = torch.arange(64).remainder(2)
    same = torch.randn(64, 4)
    shifted = same + a[:, None] * 1.5
    for loss in ("energy", "gaussian", "sinkhorn"):
        d0 = float(group_distribution_gap(same, a, 2, loss))
        d1 = float(group_distribution_gap(shifted, a, 2, loss))
        assert d1 > 1.3 * d0, (loss, d0, d1)
    tokens = torch.randn(16, 9, 4)
    assert float(group_distribution_gap(tokens, a[:16], 2, "energy")) < 0.2  # tokens (B, T, P): one cloud per group
    with pytest.raises(ValueError, match="not known"):
        group_distribution_gap(same, a, 2, "wasserstein")


@pytest.mark.parametrize("options", [
    {"perturb": "all", "d_inputs": "all", "d_kind": "spatial"},
    {"d_inputs": "all", "d_ensemble": 2, "d_reinit": 1},
    {"normalize": "instance", "objective": "none"},
    {"dist_match": "energy", "dist_features": "tokens", "objective": "none"},
    {"dist_match": "sinkhorn", "objective": "grl", "beta": 0.5},
])
def test_every_player_option_trains_on_the_frozen_model(apple_setup, options):
    net, spec, groups, split = apple_setup
    before = state_dict_hash(net)
    cfg = AppleConfig(epochs=2, d_warmup=1, **{**FAST, **options})
    res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True,
                      skip_sites=spec.skip_sites)
    assert state_dict_hash(net) == before
    want = (list(spec.skip_sites) + [spec.site]) if options.get("perturb") == "all" else [spec.site]
    assert res.sites == want and res.patched.observed == []  # the loss's extra views end with training
    last = res.history[-1]
    assert all(math.isfinite(last[k]) for k in ("l_seg", "l_d", "val_dice", "probe_auc"))
    if options.get("dist_match"):
        assert math.isfinite(last["dist_gap"])
    if options.get("normalize"):
        norms = [m for m in res.patched.perturbers.modules() if isinstance(m, PopulationNorm)]
        assert norms and all(float(m.mix) == (1.0 if res.selected_epoch > 0 else 0.0) for m in norms)
        mixes = [v for k, v in res.last_state.items() if k.endswith("norm.mix")]
        assert mixes and all(float(v) == 1.0 for v in mixes)  # switched on after the first epoch
    res.patched.remove()


def test_distribution_matching_pulls_the_groups_together(apple_setup):
    """The matching term reaches the perturber: with it, the groups' logged distribution gap ends lower."""
    net, spec, groups, split = apple_setup
    ends = {}
    for weight in (0.0, 50.0):
        cfg = AppleConfig(epochs=4, objective="none", dist_match="energy", dist_weight=weight, d_warmup=0,
                          selection="last", lr_g=1e-2, **FAST)
        res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
        res.patched.remove()
        ends[weight] = res.history[-1]["dist_gap"]
    assert ends[50.0] < 0.5 * ends[0.0], ends


class _ReadsTheGroup(torch.nn.Module):
    """A deployed model whose decoder reads an image's mean brightness: the contrast-biased minority's images
    are darker, so its output moves with the group's direction at the encoder's output (site `enc`)."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.dec = torch.nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.enc.weight.fill_(0.2)
            self.enc.bias.zero_()
            self.dec.weight.fill_(4.0)
            self.dec.bias.fill_(-3.0)

    def forward(self, x):
        return self.dec(self.enc(x))


def test_use_invariance_makes_the_output_insensitive_to_the_group_direction(tiny_frame):
    """The invariance term reaches the perturber: with it, the logged change of the output under the groups'
    mean translation ends far lower than with a negligible weight (which is logged too)."""
    import warnings

    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec("sex").fit(tiny_frame)
    split = {s: SegmentationDataset(tiny_frame, groups, s) for s in ("train", "val")}
    ends = {}
    for weight in (1e-9, 20.0):
        net = _ReadsTheGroup().eval()
        cfg = AppleConfig(epochs=4, objective="none", invariance=weight, d_warmup=0, selection="last", lr_g=1e-2,
                          seg_target="deployed", cache="off", **FAST)
        res = train_apple(net, "enc", split["train"], split["val"], groups, cfg, quiet=True)
        res.patched.remove()
        ends[weight] = res.history[-1]["use_gap"]
    assert ends[1e-9] > 1e-3 and ends[20.0] < 0.5 * ends[1e-9], ends  # noqa: PT018


def test_fidelity_to_the_deployed_model_keeps_the_patch_close_to_it(apple_setup):
    """With `seg_target: deployed` the perturber is fitted to the deployed model's own output, not to the training
    masks: its predictions stay closer to the deployed model's than a perturber fitted to the masks."""
    net, spec, groups, split = apple_setup
    x = torch.stack([split["val"][i]["image"] for i in range(len(split["val"]))])
    with torch.no_grad():
        deployed = torch.sigmoid(net(x))
    moved = {}
    for target in ("labels", "deployed"):
        cfg = AppleConfig(epochs=3, objective="none", seg_target=target, d_warmup=0, selection="last", lr_g=1e-2,
                          **FAST)
        res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
        with torch.no_grad():
            moved[target] = float((torch.sigmoid(res.patched(x)) - deployed).abs().mean())
        res.patched.remove()
    assert moved["deployed"] < 0.5 * moved["labels"], moved
