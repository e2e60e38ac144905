"""Every zoo entry (tiny): builds, trains a step, lists its sites, and stays frozen under APPLE."""

from __future__ import annotations

import warnings

import pytest
import torch

from applefair.apple.patch import PatchedSegmentor, perturbers_for
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.io import state_dict_hash
from applefair.errors import InputError
from applefair.models import create_segmentor, list_models, list_sites, load_model_dir, save_model_dir, segment
from applefair.models.sites import find_module
from applefair.training.erm import TrainConfig, train_segmentor

ZOO = ["unet", "attention_unet", "swin_unetr", "dynunet", "smp_unet", "sam", "samed"]
UNETS = ["unet", "attention_unet", "swin_unetr", "dynunet", "smp_unet"]


@pytest.fixture(scope="module")
def small(tiny_frame):
    frame = tiny_frame
    keep = [*frame[frame["split"] == "train"].head(4).index, *frame[frame["split"] == "val"].head(2).index]
    sub = frame.loc[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny groups, on purpose
        groups = GroupSpec("sex").fit(frame)
    return SegmentationDataset(sub, groups, "train"), SegmentationDataset(sub, groups, "val"), groups


def _batch(ds: SegmentationDataset) -> dict:
    items = [ds[i] for i in range(len(ds))]
    return {"image": torch.stack([it["image"] for it in items]), "mask": torch.stack([it["mask"] for it in items]),
            "group": torch.tensor([it["group"] for it in items]), "index": torch.tensor([it["index"] for it in items])}


def test_registry_holds_the_zoo():
    assert set(ZOO) <= set(list_models())
    with pytest.raises(InputError, match="not known"):
        create_segmentor("unet3000")


@pytest.mark.parametrize("name", ZOO)
def test_tiny_model_trains_and_round_trips(name, small, tmp_path):
    train, val, groups = small
    torch.manual_seed(0)
    net, spec = create_segmentor(name, tiny=True)
    batch = _batch(train)
    with torch.no_grad():
        out = segment(net.eval(), batch)
    assert out.shape == batch["mask"].shape and torch.isfinite(out).all()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _, history = train_segmentor(net, train, val, groups, TrainConfig(epochs=1, batch_size=4, augment=False),
                                 quiet=True)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    changed = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "one ERM step changed no weight"
    save_model_dir(tmp_path / name, net, spec)  # the model folder round-trips bit for bit
    loaded, loaded_spec = load_model_dir(tmp_path / name)
    assert state_dict_hash(loaded) == state_dict_hash(net) and loaded_spec.site == spec.site
    with torch.no_grad():
        assert torch.equal(segment(loaded.eval(), batch), segment(net.eval(), batch))


@pytest.mark.parametrize("name", ZOO)
def test_declared_sites_are_listed_as_tensor_outputs(name):
    net, spec = create_segmentor(name, tiny=True)
    infos = {s.name: s for s in list_sites(net, torch.rand(1, 1, 64, 64), spec.site, spec.skip_sites)}
    assert infos[spec.site].role == "default"
    for s in [spec.site, *spec.skip_sites]:
        assert len(infos[s].shape) == 4 and infos[s].calls == 1, (s, infos[s])
    for s in spec.skip_sites:
        assert infos[s].role == "skip"
    if name in UNETS:
        assert len(spec.skip_sites) >= 2
        assert infos[spec.site].shape[-1] < infos[spec.skip_sites[0]].shape[-1]  # the bottleneck is coarser


@pytest.mark.parametrize("name", ZOO)
def test_apple_multi_site_keeps_weights_and_zero_init_output(name, small):
    train, _, _ = small
    torch.manual_seed(1)
    net, spec = create_segmentor(name, tiny=True)
    net.eval()
    batch = _batch(train)
    with torch.no_grad():
        reference = segment(net, batch)
    digest = state_dict_hash(net)
    sites = [spec.site, *spec.skip_sites]
    patched = PatchedSegmentor(net, perturbers_for(net, sites, batch, width=8))
    with torch.no_grad():
        assert torch.equal(segment(patched, batch), reference)
    assert set(patched.latents) == set(sites)
    # one perturber step through the frozen segmentor
    patched.train()
    opt = torch.optim.Adam(patched.perturbers.parameters(), lr=1e-2)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(segment(patched, batch), batch["mask"])
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in net.parameters())
    assert state_dict_hash(net) == digest
    with torch.no_grad():
        assert not torch.equal(segment(patched, batch), reference)  # the perturbers did act


def test_unknown_site_lists_nearest_names():
    net, spec = create_segmentor("dynunet", tiny=True)
    with pytest.raises(InputError, match="nearest valid sites: .*bottleneck"):
        find_module(net, "bottlenek")
