"""APPLE: a perturber between the frozen encoder and decoder, trained against a discriminator."""

from applefair.apple.discriminator import Discriminator
from applefair.apple.patch import PatchedSegmentor
from applefair.apple.perturber import Perturber
from applefair.apple.trainer import AppleConfig, train_apple

__all__ = ["AppleConfig", "Discriminator", "PatchedSegmentor", "Perturber", "train_apple"]
