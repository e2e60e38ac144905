"""U-Net-like segmentors of the zoo, each with its bottleneck (default site) and skip sites.

All take 1 input channel and give 1 output logit channel; all are 2-D except `unet` with
``spatial_dims=3`` (the preset ``unet3d``), MONAI's 3-D U-Net, which slides a window of ``roi_size``
over larger volumes at inference (`applefair.models.sliding`). A skip site is the encoder output of one
resolution level (it feeds both the skip connection and the next level), so perturbing
"every skip level plus the bottleneck" touches everything the decoder receives.
"""

from __future__ import annotations

import torch
from torch import nn

from applefair.errors import InputError
from applefair.models.registry import preset, register
from applefair.models.sites import (
    attention_unet_sites,
    feature_sites,
    unet_bottleneck_site,
    unet_skip_sites,
)


@register("unet", tiny={"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
          summary="MONAI UNet (residual units; spatial_dims=3 for volumes)")
def _unet(in_channels: int = 1, out_channels: int = 1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
          num_res_units: int = 2, dropout: float = 0.0, spatial_dims: int = 2, roi_size=None, sw_batch_size: int = 4,
          overlap: float = 0.5) -> tuple[nn.Module, str, list[str], dict]:
    """`roi_size` (the patch, voxels or pixels): inputs larger than it are predicted in overlapping windows in
    eval mode (`sw_batch_size` windows at a time, `overlap` of a window, Gaussian blending)."""
    from monai.networks.nets import UNet

    if int(spatial_dims) not in (2, 3):
        raise InputError(f"unet spatial_dims {spatial_dims}: expected 2 (images) or 3 (volumes)")
    kwargs = {"spatial_dims": int(spatial_dims), "in_channels": in_channels, "out_channels": out_channels,
              "channels": tuple(channels), "strides": tuple(strides), "num_res_units": num_res_units,
              "dropout": dropout, "norm": "batch"}
    if int(spatial_dims) == 2 and roi_size is None:
        net = UNet(**kwargs)  # the 2-D zoo model as it always was
    else:
        from applefair.models.unet3d import SlidingUNet

        net = SlidingUNet(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, **kwargs)
    return net, unet_bottleneck_site(net), unet_skip_sites(net), {"spatial_dims": int(spatial_dims)}


preset("unet_large", "unet", {"channels": [64, 128, 256, 512, 1024], "strides": [2, 2, 2, 2], "num_res_units": 2},
       size=512, summary="MONAI UNet of deployment size: the original U-Net's widths (64-1024), residual units")
preset("unet3d", "unet", {"spatial_dims": 3, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2},
       size=96, summary="MONAI's 3-D UNet (volumes; roi_size=N slides N-voxel windows over larger volumes)")


@register("attention_unet", tiny={"channels": [8, 16, 32, 64], "strides": [2, 2, 2]},
          summary="MONAI AttentionUnet (attention-gated skips)")
def _attention_unet(in_channels: int = 1, out_channels: int = 1, channels=(16, 32, 64, 128),
                    strides=(2, 2, 2), dropout: float = 0.0) -> tuple[nn.Module, str, list[str]]:
    from monai.networks.nets import AttentionUnet

    net = AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                        channels=tuple(channels), strides=tuple(strides), dropout=dropout)
    bottleneck, skips = attention_unet_sites(net)
    return net, bottleneck, skips


@register("swin_unetr", tiny={"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3]},
          summary="MONAI SwinUNETR (Swin transformer encoder; input side a multiple of 32)")
def _swin_unetr(in_channels: int = 1, out_channels: int = 1, feature_size: int = 24, depths=(2, 2, 2, 2),
                num_heads=(3, 6, 12, 24), window_size: int = 7, drop_rate: float = 0.0
                ) -> tuple[nn.Module, str, list[str]]:
    from monai.networks.nets import SwinUNETR

    if int(feature_size) % 12:
        raise InputError(f"swin_unetr feature_size {feature_size}: expected a multiple of 12")
    net = SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=2,
                    feature_size=int(feature_size), depths=tuple(depths), num_heads=tuple(num_heads),
                    window_size=window_size, drop_rate=drop_rate)
    # encoder10 turns the deepest Swin stage into the tensor decoder5 upsamples: the bottleneck.
    # encoder1-4 are the convolutional skip paths (the 4th Swin stage's skip is no module output).
    return net, "encoder10", ["encoder1", "encoder2", "encoder3", "encoder4"]


@register("dynunet", tiny={"filters": [8, 16, 32, 64]}, summary="MONAI DynUNet (nnU-Net's network)")
def _dynunet(in_channels: int = 1, out_channels: int = 1, filters=(32, 64, 128, 256), kernel_size=None,
             strides=None, res_block: bool = False) -> tuple[nn.Module, str, list[str]]:
    from monai.networks.nets import DynUNet

    levels = len(filters)
    kernel_size = list(kernel_size or [3] * levels)
    strides = list(strides or [1] + [2] * (levels - 1))
    if not len(kernel_size) == len(strides) == levels:
        raise InputError(f"dynunet: filters, kernel_size and strides need the same length "
                         f"({levels}, {len(kernel_size)}, {len(strides)})")
    net = DynUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                  strides=strides, upsample_kernel_size=strides[1:], filters=list(filters), res_block=res_block)
    skips = ["input_block"] + [f"downsamples.{i}" for i in range(len(net.downsamples))]
    return net, "bottleneck", skips


preset("dynunet_large", "dynunet", {"filters": [32, 64, 128, 256, 512, 512]}, size=256,
       summary="DynUNet in nnU-Net's 2-D layout: filters doubling from 32, capped at 512, 6 stages")


@register("smp_unet", tiny={"encoder_name": "tu-regnetx_002", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
          summary="segmentation_models_pytorch Unet (any encoder, encoder_weights=None)")
def _smp_unet(in_channels: int = 1, out_channels: int = 1, encoder_name: str = "resnet34", encoder_depth: int = 5,
              decoder_channels=(256, 128, 64, 32, 16)) -> tuple[nn.Module, str, list[str]]:
    import segmentation_models_pytorch as smp

    try:
        net = smp.Unet(encoder_name=encoder_name, encoder_depth=int(encoder_depth), encoder_weights=None,
                       decoder_channels=tuple(decoder_channels), in_channels=in_channels, classes=out_channels)
    except (KeyError, ValueError) as exc:
        raise InputError(f"smp_unet: cannot build encoder '{encoder_name}' ({exc})") from None
    size = 2 ** int(encoder_depth) * 2
    sites = feature_sites(net, "encoder", net.encoder, torch.zeros(1, in_channels, size, size))
    return net, sites[-1], sites[:-1]
