"""AppleConfig: every knob of APPLE, with the defaults that docs/ablation.md justifies."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from applefair.apple.discriminator import POOLS
from applefair.apple.losses import OBJECTIVES
from applefair.apple.perturber import KINDS
from applefair.errors import InputError

CACHE_MODES = ("auto", "memory", "disk", "off")
SELECTIONS = ("es_dice", "last")
PRECISIONS = ("auto", "fp32", "bf16")  # fp16 would need a loss scaler per player of the game


@dataclass
class AppleConfig:
    """APPLE's knobs.

    Objective: L_G = L_seg + adv + lam * ||G_p(f_o)||^2, adv chosen by `objective`
    (negce: -alpha*CE, the paper; kl: alpha*KL(uniform||D); grl: gradient reversal; none),
    plus -beta * entropy(D) and gamma * the groups' distance in mean pooled statistics of f_p.
    Selection: the epoch with the best validation ES-Dice among those
    whose overall validation Dice is at most `tolerance` below the deployed model's (and whose
    fresh probe's validation AUC is at most `max_probe_auc`).
    """

    epochs: int = 30
    batch_size: int = 16
    # perturber G_p
    # auto: the largest of U shape w32/16/8, conv w32/16/8/4 within max_params_ratio of the deployed
    # model's parameters (the paper's U shape on large models; a small conv on small ones);
    # unet: the paper's U shape | conv: two 3x3 convs, both of `width` (ignored by auto)
    perturber: str = "auto"
    width: int = 32
    max_params_ratio: float = 0.05
    res_blocks: int = 4
    global_branch: bool = False  # FiLM-style per-image scale/shift from pooled stats
    sites: list[str] = field(default_factory=list)  # empty: the model's default site
    # objective
    objective: str = "kl"
    alpha: float = 1.0
    beta: float = 0.0
    lam: float = 0.0
    # group-mean matching of f_p's pooled (mean, std) statistics: what a fresh linear probe reads
    gamma: float = 0.0
    balanced_seg: bool = False  # group-balanced weighting of L_seg
    # discriminator D_p
    d_hidden: int = 128
    d_dropout: float = 0.3
    d_label_smoothing: float = 0.0
    d_spectral_norm: bool = False
    d_pooling: str = "meanstd"
    n_d: int = 1  # discriminator steps per perturber step
    d_warmup: int = 1  # epochs of discriminator-only training on the unperturbed latents
    # optimisation
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    cosine: bool = True  # cosine decay of both learning rates over `epochs`
    grad_clip: float = 5.0  # max gradient norm (0: off)
    # selection and stopping
    selection: str = "es_dice"  # es_dice (with the Dice tolerance) | last
    tolerance: float = 0.01
    # also require the fresh probe's validation AUC at most this (1.0: no leakage requirement)
    max_probe_auc: float = 1.0
    patience: int = 0  # epochs without a better selected score before stopping (0: never)
    # latent cache: auto = in memory unless `augment`
    cache: str = "auto"
    # 0: every process caches the whole training split (N processes == 1 process); K > 0: the
    # shard-stratified batch order over K shards, each of N processes caches only its 1/N (K % N == 0)
    cache_shards: int = 0
    augment: bool = False  # random horizontal flips (disables the cache)
    # autocast of the game's forward passes: auto = bf16 on GPUs that have it, else fp32 (the CPU)
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"perturber": ("auto", *KINDS), "objective": OBJECTIVES, "d_pooling": POOLS, "cache": CACHE_MODES,
                  "selection": SELECTIONS, "precision": PRECISIONS}
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise InputError(f"apple config: {key}='{getattr(self, key)}' (expected one of: {', '.join(allowed)})")
        for key in ("epochs", "batch_size", "width", "n_d"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"apple config: {key}={getattr(self, key)} (expected an integer >= 1)")
        if not self.max_params_ratio > 0:
            raise InputError(f"apple config: max_params_ratio={self.max_params_ratio} (expected a share > 0)")
        if not 0.5 <= self.max_probe_auc <= 1.0:
            raise InputError(f"apple config: max_probe_auc={self.max_probe_auc} (expected 0.5 <= value <= 1)")
        if not 0.0 <= self.d_dropout < 1.0:
            raise InputError(f"apple config: d_dropout={self.d_dropout} (expected 0 <= value < 1)")
        if not 0.0 <= self.d_label_smoothing < 1.0:
            raise InputError(f"apple config: d_label_smoothing={self.d_label_smoothing} (expected 0 <= value < 1)")
        self.sites = list(self.sites)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> AppleConfig:
        """From a plain dict (e.g. YAML); unknown keys are an InputError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise InputError(f"{source}: unknown APPLE option(s) {', '.join(bad)} "
                             f"(expected some of: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            if not _has_type(value, hints[key]):
                raise InputError(f"{source}: key '{key}': expected {_type_name(hints[key])}, got {value!r}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"{source}: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _has_type(value: object, hint: object) -> bool:
    """YAML value check for the simple field types of AppleConfig (bool is not an int here)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    return True


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def load_apple_config(path: str | os.PathLike | None) -> AppleConfig:
    """AppleConfig from a YAML file (keys at the top level or under `apple:`); defaults if None."""
    if path is None:
        return AppleConfig()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a mapping of APPLE options, got {type(d).__name__}")
    return AppleConfig.from_dict(d.get("apple", d), source=str(path))
