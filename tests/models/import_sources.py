"""Tiny models in the formats users bring: an nnU-Net v2 results folder, a MONAI bundle, a user's module.

Each is written the way its framework writes it (nnU-Net's folder layout and checkpoint dict, a
bundle's configs/ + models/), small enough to run on a CPU in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

_RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}}


def _architecture(dims: int, features: list[int]) -> dict:
    n = len(features)
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": features,
                            "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": [[3] * dims] * n,
                            "strides": [[1] * dims] + [[2] * dims] * (n - 1), "n_conv_per_stage": [2] * n,
                            "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def nnunet_plans(scheme_2d: str = "ZScoreNormalization", scheme_3d: str = "CTNormalization") -> dict:
    """A small nnU-Net v2 plans.json: a 2d (64 x 64 patch) and a 3d_fullres (16 x 32 x 32) configuration."""
    def config(dims, patch, scheme):
        name = "2d" if dims == 2 else "3d_fullres"
        return {"data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0] * dims,
                "normalization_schemes": [scheme], "use_mask_for_norm": [False], **_RESAMPLING,
                "architecture": _architecture(dims, [4, 8, 16]), "batch_dice": dims == 2}

    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
            "original_median_shape_after_transp": [16, 64, 64], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"2d": config(2, [64, 64], scheme_2d), "3d_fullres": config(3, [16, 32, 32], scheme_3d)},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {
                "max": 3000.0, "mean": 100.0, "median": 90.0, "min": -1000.0, "percentile_00_5": -500.0,
                "percentile_99_5": 800.0, "std": 250.0}}}


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1}, "numTraining": 40,
                "file_ending": ".nii.gz"}


def write_nnunet_results(root: Path, configuration: str = "2d", seed: int = 0, plans: dict | None = None,
                         features: list[int] | None = None) -> Path:
    """nnU-Net's results layout (plans.json, dataset.json, fold_0/checkpoint_final.pth) with the
    checkpoint dict nnUNetTrainer.save_checkpoint writes (numpy scalars in its log included).

    `features` different from the plans' gives weights that do not fit."""
    plans = plans or nnunet_plans()
    folder = Path(root) / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=1))
    arch = plans["configurations"][configuration]["architecture"]
    dims = 2 if configuration == "2d" else 3
    if features is not None:
        arch = _architecture(dims, features)
    from applefair.models.nnunet import build_network

    torch.manual_seed(seed)
    net = build_network(arch, 1, 2)
    with torch.no_grad():  # instance-norm affines away from 1/0 so that a wrong load shows
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    net(torch.rand(1, 1, *([32] * dims))).mean().backward()
    opt.step()
    checkpoint = {
        "network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.61), np.float64(0.64)], "ema_fg_dice": [np.float64(0.6)],
                    "train_losses": [np.float32(-0.3)], "lrs": [0.01, 0.0099], "epoch_start_timestamps": [1.7e9]},
        "_best_ema": np.float64(0.6), "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": DATASET_JSON,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1) if dims == 2 else (0, 1, 2)}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


BUNDLE_NETWORK = {"_target_": "UNet", "spatial_dims": "@spatial_dims", "in_channels": 1, "out_channels": 2,
                  "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch"}


def write_bundle(root: Path, network_def: dict | None = None, extra_transforms: list | None = None) -> Path:
    """A MONAI bundle folder: configs/inference.json, configs/metadata.json, models/model.pt (a state dict)."""
    bundle = Path(root) / "tiny_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    transforms = [{"_target_": "EnsureTyped", "keys": "image"},
                  {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.1, "a_max": 0.9, "b_min": -1.0,
                   "b_max": 1.0, "clip": True},
                  {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
                  *(extra_transforms or [])]
    config = {"image_key": "image", "spatial_dims": 2, "network_def": network_def or BUNDLE_NETWORK,
              "network": "$@network_def.to('cpu')",
              "preprocessing": {"_target_": "Compose", "transforms": transforms},
              "inferer": {"_target_": "SimpleInferer"},
              "postprocessing": {"_target_": "Compose", "transforms": [
                  {"_target_": "Activationsd", "keys": "pred", "softmax": True}]}}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    meta = {"name": "tiny_bundle", "version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [64, 64]}},
        "outputs": {"pred": {"type": "image", "num_channels": 2, "spatial_shape": [64, 64]}}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    torch.manual_seed(1)
    net = parser.get_parsed_content("network_def", instantiate=True)
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle


class TinyUserNet(nn.Module):
    """A user's own two-level U-Net: (B, 1, H, W) -> one logit per pixel."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.bottleneck = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.up1 = nn.ConvTranspose2d(4 * width, width, 2, stride=2)
        self.head = nn.Conv2d(2 * width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        b = self.bottleneck(s2)
        y = self.up1(torch.cat([self.up2(b), s2], 1))
        return self.head(torch.cat([y, s1], 1))
