"""APPLE: a perturber between the frozen encoder and decoder, trained against a discriminator."""

from applefair.apple.config import AppleConfig
from applefair.apple.discriminator import Discriminator
from applefair.apple.patch import PatchedSegmentor, attach, save_patch
from applefair.apple.perturber import ConvPerturber, Perturber, build_perturber
from applefair.apple.trainer import evaluate_patched, train_apple

__all__ = ["AppleConfig", "ConvPerturber", "Discriminator", "PatchedSegmentor", "Perturber", "attach",
           "build_perturber", "evaluate_patched", "save_patch", "train_apple"]
