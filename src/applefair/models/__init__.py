"""Segmentor zoo and latent sites (where the encoder E_s ends and the decoder D_s begins).

Importing the package registers every model family of the zoo (as timm does): the registry
itself knows no family, so families import the registry and never the other way round.
"""

from applefair.models import bundle, custom, nnunet, sam, unets  # noqa: F401  (registers the zoo's names)
from applefair.models.bundle import import_bundle
from applefair.models.checkpoints import load_checkpoint, read_checkpoint
from applefair.models.custom import import_module
from applefair.models.forward import segment
from applefair.models.nnunet import import_nnunet
from applefair.models.prompts import PromptConfig, derive_prompts
from applefair.models.registry import (
    ModelSpec,
    create_segmentor,
    list_models,
    load_model_dir,
    model_info,
    save_model_dir,
)
from applefair.models.sites import find_module, list_sites, unet_bottleneck_site

__all__ = ["ModelSpec", "PromptConfig", "create_segmentor", "derive_prompts", "find_module", "import_bundle",
           "import_module", "import_nnunet", "list_models", "list_sites", "load_checkpoint", "load_model_dir",
           "model_info", "read_checkpoint", "save_model_dir", "segment", "unet_bottleneck_site"]
