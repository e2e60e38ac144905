"""Segmentor zoo and latent sites (where the encoder E_s ends and the decoder D_s begins)."""

from applefair.models.registry import (
    ModelSpec,
    create_segmentor,
    list_models,
    load_model_dir,
    save_model_dir,
    segment,
)
from applefair.models.sites import find_module, unet_bottleneck_site

__all__ = ["ModelSpec", "create_segmentor", "find_module", "list_models", "load_model_dir",
           "save_model_dir", "segment", "unet_bottleneck_site"]
