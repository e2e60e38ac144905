"""MONAI's U-Net with sliding-window inference (the zoo's `unet` with ``spatial_dims=3`` or a ``roi_size``).

A module of its own so that importing the zoo does not import MONAI (the builders import it when a model
is built) while the class keeps an importable name (copies and pickles of a model need one).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet

from applefair.models.sliding import SlidingWindow


class SlidingUNet(SlidingWindow, UNet):
    """MONAI's UNet whose eval-mode forward slides windows of `roi_size` over larger inputs; the module tree
    and state dict are UNet's own, so its sites are those of the 2-D `unet` and weights load as UNet's."""

    def __init__(self, roi_size: int | Sequence[int] | None = None, sw_batch_size: int = 4, overlap: float = 0.5,
                 **kwargs):
        super().__init__(**kwargs)
        self.configure_windows(roi_size, int(kwargs.get("spatial_dims", 2)), sw_batch_size, overlap)
