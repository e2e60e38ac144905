"""APPLE: a perturber between the frozen encoder and decoder, trained against a discriminator."""

from applefair.apple.config import AppleConfig
from applefair.apple.discriminator import Discriminator
from applefair.apple.patch import PatchedSegmentor, attach, save_patch
from applefair.apple.perturber import ConvPerturber, Perturber, build_perturber
from applefair.apple.trainer import AppleResult, train_apple, validate

__all__ = ["AppleConfig", "AppleResult", "ConvPerturber", "Discriminator", "PatchedSegmentor", "Perturber", "attach",
           "build_perturber", "save_patch", "train_apple", "validate"]
