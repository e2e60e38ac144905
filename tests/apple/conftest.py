"""Fixtures of the APPLE tests: a tiny frozen U-Net saved as a model folder, and its data splits."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def apple_model_dir(tmp_path_factory):
    """A tiny, untrained (random but fixed) MONAI U-Net saved as a deployed-model folder."""
    from applefair.models.registry import create_segmentor, save_model_dir

    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    folder = tmp_path_factory.mktemp("apple_model") / "deployed"
    save_model_dir(folder, net, spec)
    return folder


@pytest.fixture()
def apple_setup(tiny_frame, apple_model_dir):
    """(net, spec, groups, splits) with a freshly loaded copy of the deployed model."""
    import warnings

    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset
    from applefair.models.registry import load_model_dir

    net, spec = load_model_dir(apple_model_dir)
    net.eval()  # a deployed model runs in eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec("sex").fit(tiny_frame)
    split = {s: SegmentationDataset(tiny_frame, groups, s) for s in ("train", "val", "test")}
    return net, spec, groups, split
