"""3-D segmentors: MONAI's 3-D U-Net (`unet3d`) with its sites, sliding-window inference over volumes larger
than its patch (and what the leakage capture sees then), and nnU-Net's 3d_fullres on NIfTI volumes."""

from __future__ import annotations

import warnings

import pytest
import torch
from import_sources import write_nnunet_results
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from applefair.data import GroupSpec, SegmentationDataset, generate, load_dataset
from applefair.errors import InputError
from applefair.metrics.evaluate import score
from applefair.metrics.leakage import pool_latent
from applefair.models import create_segmentor, list_sites, load_model_dir, save_model_dir
from applefair.models.sites import site_modules
from applefair.models.sliding import merge_window_rows, require_whole, windows_per_sample


@pytest.fixture(scope="module")
def volume_split(tmp_path_factory):
    """nodules3d volumes of 24 voxels a side: the test split as a dataset, and the group spec."""
    manifest = generate(tmp_path_factory.mktemp("vol") / "d", n=12, size=24, bias="contrast", seed=1,
                        kind="nodules3d", minority_share=0.5, split_fractions=(0.0, 0.0, 1.0))
    frame = load_dataset(manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec("sex").fit(frame)
    return SegmentationDataset(frame, groups, "test"), groups


def test_unet3d_is_monai_unet_in_3d_with_its_sites(tmp_path):
    net, spec = create_segmentor("unet3d", tiny=True, seed=0)
    assert (spec.name, spec.preset, spec.spatial_dims) == ("unet", "unet3d", 3)
    plain = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                 num_res_units=1, norm="batch")
    assert list(net.state_dict()) == list(plain.state_dict())  # the same network, weights load as UNet's
    sites = {s.name: s for s in list_sites(net, torch.zeros(1, 1, 32, 32, 32), spec.site, spec.skip_sites)}
    assert sites[spec.site].shape == (1, 64, 4, 4, 4) and sites[spec.site].role == "default"
    assert [sites[s].shape[1:] for s in spec.skip_sites] == [(8, 16, 16, 16), (16, 8, 8, 8), (32, 4, 4, 4)]
    save_model_dir(tmp_path / "m", net, spec)
    again, again_spec = load_model_dir(tmp_path / "m")
    assert again_spec.spatial_dims == 3 and type(again).__name__ == "SlidingUNet"
    x = torch.rand(1, 1, 16, 16, 16)
    assert torch.equal(again.eval()(x), net.eval()(x))
    flat, flat_spec = create_segmentor("unet", tiny=True)
    assert type(flat) is UNet and flat_spec.spatial_dims == 2 and "spatial_dims" not in flat_spec.args


def test_sliding_windows_are_monais_and_only_at_inference():
    net, _ = create_segmentor("unet3d", tiny=True, seed=0, roi_size=16)
    x = torch.rand(2, 1, 24, 32, 16)
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert net.windows == 6 and windows_per_sample(net) == 6  # 2 x 3 x 1 windows of 16 at 50% overlap
        expected = sliding_window_inference(x, (16, 16, 16), 4, lambda w: UNet.forward(net, w), overlap=0.5,
                                            mode="gaussian")
        assert torch.equal(out, expected) and out.shape == (2, 1, 24, 32, 16)
        small = torch.rand(2, 1, 16, 16, 16)
        assert torch.equal(net(small), UNet.forward(net, small)) and net.windows == 1  # fits: one pass
    net.train()
    assert net(x).shape == x.shape and net.windows == 1  # training sees the whole volume
    with pytest.raises(InputError, match="roi_size"):
        create_segmentor("unet3d", tiny=True, roi_size=[16, 16])


def test_merged_window_rows_are_the_statistics_of_every_window_position():
    torch.manual_seed(0)
    windows = torch.randn(2, 3, 5, 4, 4, 4)  # 2 samples x 3 windows, 5 channels
    rows = pool_latent(windows.reshape(6, 5, 4, 4, 4))
    merged = merge_window_rows(rows, 3)
    whole = pool_latent(windows.permute(0, 2, 1, 3, 4, 5).reshape(2, 5, 3 * 4, 4, 4))
    assert torch.allclose(merged, whole, atol=1e-5)
    assert merge_window_rows(rows, 1) is rows
    with pytest.raises(ValueError, match="windows per sample"):
        merge_window_rows(rows[:5], 3)


def test_leakage_capture_keeps_one_row_per_volume_under_sliding_windows(volume_split):
    ds, groups = volume_split
    net, spec = create_segmentor("unet3d", tiny=True, seed=0, roi_size=16)
    net.eval()
    capture = site_modules(net, [spec.site, *spec.skip_sites])
    scored = score(net, ds, groups, capture=capture, batch_size=5, metrics=("dice", "hd95"))
    assert net.windows == 8  # 24 voxels a side, windows of 16 at 50% overlap: 2 x 2 x 2
    for s, rows in scored.latents.items():
        assert rows.shape[0] == len(ds), s  # one pooled row per sample, whatever the number of windows
    seen = []  # by hand: the pooled rows of each window of the first volume, merged
    handle = capture[spec.site].register_forward_hook(lambda _m, _i, out: seen.append(pool_latent(out)))
    with torch.no_grad():
        net(ds[0]["image"][None])
    handle.remove()
    by_hand = merge_window_rows(torch.cat(seen), 8)[0]
    assert torch.allclose(torch.from_numpy(scored.latents[spec.site][0]), by_hand, atol=1e-5)


def test_methods_that_read_each_latent_refuse_windowed_volumes(volume_split):
    from applefair.baselines import Budget, get_method

    ds, groups = volume_split
    net, spec = create_segmentor("unet3d", tiny=True, seed=0, roi_size=16)
    require_whole(net, (1, 16, 16, 16), "APPLE")  # fits the patch: fine
    for method in ("apple", "faap"):
        with pytest.raises(InputError, match=r"24x24x24 is larger than the model's roi_size 16x16x16") as err:
            get_method(method).fit(net.eval(), spec, ds, ds, groups, Budget(epochs=1, batch_size=2), quiet=True)
        assert "\n" not in str(err.value)


def test_nnunet_3d_fullres_scores_nifti_volumes_in_mm_and_takes_a_3d_patch(tmp_path, volume_split):
    from applefair.baselines import Budget, get_method
    from applefair.engine.io import state_dict_hash
    from applefair.models.nnunet import import_nnunet

    ds, groups = volume_split
    results = write_nnunet_results(tmp_path, "3d_fullres")
    import_nnunet(results, tmp_path / "m3", "3d_fullres")
    net, spec = load_model_dir(tmp_path / "m3")
    assert spec.spatial_dims == 3 and spec.head == "softmax"
    scored = score(net.eval(), ds, groups, capture=site_modules(net, [spec.site]),
                   metrics=("dice", "iou", "hd95", "nsd"))
    assert len(scored.per_sample) == len(ds) and scored.latents[spec.site].shape[0] == len(ds)
    diagonal = [float(torch.linalg.vector_norm(24 * ds[i]["spacing"])) for i in range(len(ds))]
    hd = scored.per_sample["hd95"].tolist()
    assert all(0 <= h <= d + 1e-4 for h, d in zip(hd, diagonal, strict=True))  # in mm, within each volume
    before = state_dict_hash(net)
    fit = get_method("apple").fit(net, spec, ds, ds, groups, Budget(epochs=1, batch_size=2), {"perturb": "all"},
                                  quiet=True)
    assert set(fit.latent_sites) == {spec.site, *spec.skip_sites}
    assert all(p["dims"] == 3 for p in fit.model.perturber_specs().values())
    assert state_dict_hash(net) == before == state_dict_hash(fit.deployed)  # nnU-Net's weights untouched
