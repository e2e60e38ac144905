"""The use measure: ~0 for a decoder that ignores its input, high for one that copies a group cue, at its
permutation null when the groups do not differ; it moves each decoder input once and runs before a perturber."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from applefair.data.groups import GroupSpec
from applefair.metrics.use import mask_agreement, use_measure

SPEC = GroupSpec("g", ["A", "B"])
BIG = torch.zeros(1, 1, 16, 16)
BIG[..., 4:12, 4:12] = 1
SMALL = torch.zeros(1, 1, 16, 16)
SMALL[..., 6:10, 6:10] = 1


class _Data(torch.utils.data.Dataset):
    """Group A (0) dark, group B (1) bright (`cue`), or both drawn alike (`cue=False`); every mask is the big box."""

    def __init__(self, n: int = 40, cue: bool = True, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.group_ids = [i % 2 for i in range(n)]
        self.images = torch.rand(n, 1, 16, 16, generator=g) * 0.2
        if cue:
            self.images += 0.5 * torch.tensor(self.group_ids, dtype=torch.float32)[:, None, None, None]
        else:
            self.images += 0.5 * (torch.rand(n, 1, 1, 1, generator=g) > 0.5)

    def __len__(self):
        return len(self.group_ids)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": BIG[0], "group": self.group_ids[i], "index": i}


class _Copy(nn.Module):
    """Predicts the big box when its latent is bright and the small one otherwise (a decoder that copies the
    brightness cue), or always the small one (`ignore`). `enc2` follows `enc1`; the decoder reads `enc2` only."""

    def __init__(self, ignore: bool = False):
        super().__init__()
        self.enc1, self.enc2, self.ignore = nn.Identity(), nn.Identity(), ignore

    def forward(self, x):
        z = self.enc2(self.enc1(x))
        bright = (z.mean((1, 2, 3), keepdim=True) > 0.35).float() * (not self.ignore)
        return 20 * (bright * BIG + (1 - bright) * SMALL) - 10


def test_a_decoder_that_ignores_its_input_reads_zero():
    model = _Copy(ignore=True)
    out = use_measure(model, _Data(), SPEC, {"enc2": model.enc2}, resamples=100, permutations=3)
    assert out["output_change"] == 0 and out["used"] is False and out["groups"]["A"]["dice_change"] == 0
    assert out["verdict"] == "not_used"


def test_a_decoder_that_copies_a_group_cue_reads_high_and_gains_dice_for_the_worse_group():
    model = _Copy()
    out = use_measure(model, _Data(), SPEC, {"enc2": model.enc2}, resamples=100, permutations=3, roles={"enc2": "x"})
    assert out["output_change"] == pytest.approx(0.6) and out["used"] is True
    assert out["null_output_change_max"] < 0.1 and out["p_value"] == pytest.approx(0.25)
    assert out["worst_group"] == "A" and out["worst_group_dice_change"] == pytest.approx(0.6, abs=1e-6)
    assert out["worst_group_gains"] and out["verdict"] == "used_gain"
    assert out["groups"]["B"]["dice_change"] == pytest.approx(-0.6, abs=1e-6)  # B moved to A's darkness
    assert out["sites"] == {"enc2": "x"} and out["n_per_group"] == {"A": 20, "B": 20}
    assert out["statistic"] == "map" and len(out["output_change_ci"]) == 2


def test_a_moved_output_without_a_dice_gain_is_told_apart():
    """The worst-off group's truth lies where neither prediction reaches (its information is missing): the
    output moves with the group statistics, its Dice does not rise."""
    model = _Copy()
    data = _Data()
    corner = torch.zeros(1, 16, 16)
    corner[:, :3, :3] = 1
    data.__class__ = type("_Missing", (_Data,), {"__getitem__": lambda self, i: {
        **_Data.__getitem__(self, i), "mask": corner if self.group_ids[i] == 0 else BIG[0]}})
    out = use_measure(model, data, SPEC, {"enc2": model.enc2}, resamples=100, permutations=3)
    assert out["used"] and out["worst_group"] == "A" and out["worst_group_dice_change"] == 0
    assert not out["worst_group_gains"] and out["verdict"] == "used_no_gain"


def test_without_a_group_difference_the_measure_stays_at_its_permutation_null():
    model = _Copy()
    out = use_measure(model, _Data(cue=False, n=60), SPEC, {"enc2": model.enc2}, resamples=100, permutations=5)
    assert out["used"] is False and out["output_change"] < 0.2


@pytest.mark.parametrize("statistic", ["map", "channel"])
def test_each_decoder_input_is_moved_once_from_its_clean_value(statistic):
    """Moving enc1 alone must not reach the decoder through enc2 (enc2 is fed its clean output), so it reads 0;
    moving enc2 alone, or both, reads the full change."""
    model = _Copy()
    out = use_measure(model, _Data(), SPEC, {"enc1": model.enc1, "enc2": model.enc2}, statistic=statistic,
                      per_site=True, resamples=0, permutations=2)
    assert out["per_site"]["enc1"]["output_change"] == 0
    assert out["per_site"]["enc2"]["output_change"] == pytest.approx(0.6)
    assert out["output_change"] == pytest.approx(0.6) and "output_change_ci" not in out
    alone = use_measure(model, _Data(), SPEC, {"enc2": model.enc2}, resamples=0, permutations=0)
    assert alone["used"] is None and alone["verdict"] is None  # without a null level, no verdict


def test_the_counterfactual_acts_before_a_perturber():
    """With a patch, the hooks move f_o and the perturber acts on the moved latent: here a perturber that
    brightens every latent erases the cue, so the patched model does not use the group."""
    from applefair.apple.patch import PatchedSegmentor

    class Brighten(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def forward(self, f):
            self.seen.append(f.detach().clone())
            return torch.full_like(f, 0.6) - f  # f_p = f + G(f) = 0.6 everywhere

    net, pert = _Copy(), Brighten()
    patched = PatchedSegmentor(net, {"enc2": pert})
    try:
        out = use_measure(patched, _Data(), SPEC, {"enc2": net.enc2}, resamples=0, permutations=2)
        assert out["output_change"] == 0 and out["used"] is False
        data = _Data()
        clean = {round(float(x.mean()), 6) for x in data.images}
        seen = {round(float(x.mean()), 6) for batch in pert.seen for x in batch}
        assert seen - clean  # the perturber received moved latents, not only clean ones
        with patched.disabled():
            assert use_measure(patched, data, SPEC, {"enc2": net.enc2}, resamples=0, permutations=2)["used"]
    finally:
        patched.remove()


def test_a_site_that_runs_twice_per_forward_gives_no_measure():
    class Twice(_Copy):
        def forward(self, x):
            return super().forward(self.enc2(x))

    model = Twice()
    out = use_measure(model, _Data(), SPEC, {"enc2": model.enc2}, resamples=0, permutations=1)
    assert np.isnan(out["output_change"]) and out["used"] is None and "more than once" in out["note"]


def test_unknown_and_single_sample_groups_are_left_out():
    model = _Copy()
    data = _Data(n=20)
    data.group_ids = [0] * 10 + [1] + [-1] * 9
    out = use_measure(model, data, SPEC, {"enc2": model.enc2}, resamples=0, permutations=1)
    assert np.isnan(out["output_change"]) and out["used"] is None


def test_mask_agreement():
    a = torch.zeros(3, 4, 4, dtype=torch.long)
    b = a.clone()
    a[1, :2] = 1
    b[1, :2] = 1
    a[2, 0] = 1
    b[2, 3] = 1
    assert mask_agreement(a, b).tolist() == [1.0, 1.0, 0.0]  # both empty: nothing changed
    assert mask_agreement(a * 2, b * 2, classes=3).tolist() == [1.0, 1.0, 0.0]
