"""AppleConfig: every knob of APPLE, with the defaults that docs/ablation.md justifies.

A `Settings` model like every command's configuration: unknown keys and values of the wrong type
are one-line InputErrors naming the key, from a YAML file as from Python. YAML types are strict
(a bool is not an integer, a string is not a number).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from applefair.apple.discriminator import KINDS as D_KINDS
from applefair.apple.losses import DIST_LOSSES, OBJECTIVES
from applefair.apple.perturber import KINDS
from applefair.engine.config import Settings, read_config_file, validate_settings
from applefair.engine.precision import GAME_PRECISIONS
from applefair.errors import InputError
from applefair.metrics.leakage import POOLS

CACHE_MODES = ("auto", "memory", "disk", "off")
SELECTIONS = ("es_dice", "last")


class AppleConfig(Settings):
    """APPLE's knobs.

    Objective: L_G = L_seg + adv + lam * ||G_p(f_o)||^2, adv chosen by `objective`
    (negce: -alpha*CE, the paper; kl: alpha*KL(uniform||D); grl: gradient reversal; none),
    plus -beta * entropy(D) and gamma * the groups' distance in mean pooled statistics of f_p.
    Selection: the epoch with the best validation ES-Dice among those
    whose overall validation Dice is at most `tolerance` below the deployed model's (and whose
    fresh probe's validation AUC is at most `max_probe_auc`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
    label: ClassVar[str] = "apple config"

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    # perturber G_p
    # auto (default): the paper's U shape at width 32, 16 or 8, the widest within max_params_ratio of the
    # deployed model's parameters, and width 32 where none is (`width` ignored) | unet: the U shape at `width` |
    # conv: two 3x3 convs of `width`. Chosen by the defaults ablation (docs/ablation.md): on the SAM-like model
    # the two-conv perturber an older `auto` gave small models cost most of the effect
    perturber: Literal[("auto", *KINDS)] = "auto"
    width: int = Field(32, ge=1)
    max_params_ratio: float = Field(0.05, gt=0)
    res_blocks: int = Field(4, ge=0)
    global_branch: bool = False  # FiLM-style per-image scale/shift from pooled stats
    sites: list[str] = Field(default_factory=list)  # empty: see `perturb`
    # where perturbers go when `sites` is empty: the model's default site, or every decoder input
    # (each skip level and the bottleneck)
    perturb: Literal["site", "all"] = "site"
    # instance: each image's per-channel mean/std brought to the population's (AdaIN) before the residual
    normalize: Literal["none", "instance"] = "none"
    # objective
    objective: Literal[OBJECTIVES] = "kl"
    alpha: float = 1.0
    beta: float = 0.0
    lam: float = 0.0
    # group-mean matching of f_p's pooled (mean, std) statistics: what a fresh linear probe reads
    gamma: float = 0.0
    # distribution matching between the groups (geomloss): of pooled statistics or of spatial tokens
    dist_match: Literal[DIST_LOSSES] = "none"
    dist_weight: float = Field(1.0, ge=0)
    dist_features: Literal["pooled", "tokens"] = "pooled"
    dist_blur: float = Field(0.5, gt=0)
    balanced_seg: bool = False  # group-balanced weighting of L_seg
    # what L_seg compares the patched model's output with: the training masks (Dice + CE), or the deployed
    # model's own output (fidelity, a distillation loss: the patch cannot learn from the training masks what
    # the deployed model did not do)
    seg_target: Literal["labels", "deployed"] = "labels"
    # use-invariance: weight of the change in the output when each image's perturbed decoder inputs are moved
    # by the difference of the groups' mean latents (what the decoder does with the group)
    invariance: float = Field(0.0, ge=0)
    # discriminator D_p
    d_hidden: int = Field(128, ge=1)
    d_dropout: float = Field(0.3, ge=0, lt=1)
    d_label_smoothing: float = Field(0.0, ge=0, lt=1)
    d_spectral_norm: bool = False
    d_pooling: Literal[POOLS] = "meanstd"
    d_kind: Literal[D_KINDS] = "pooled"  # spatial: two convolutions per latent before pooling
    d_inputs: Literal["perturbed", "all"] = "perturbed"  # what D_p reads: the perturbed sites, or every decoder input
    d_ensemble: int = Field(1, ge=1)  # discriminators the perturbers must fool at once
    d_reinit: int = Field(0, ge=0)  # re-initialise D_p every this many epochs (0: never)
    n_d: int = Field(1, ge=1)  # discriminator steps per perturber step
    d_warmup: int = Field(1, ge=0)  # epochs of discriminator-only training on the unperturbed latents
    # optimisation
    lr_g: float = Field(1e-3, gt=0)
    lr_d: float = Field(1e-3, gt=0)
    cosine: bool = True  # cosine decay of both learning rates over `epochs`
    grad_clip: float = Field(5.0, ge=0)  # max gradient norm (0: off)
    # games played from other initialisations (seed, seed+1000, ...) on one latent cache; the restart whose
    # selected epoch scores best on validation ES-Dice is kept. Each costs one game. 3 (docs/ablation.md,
    # "Restarts"): on the misused cues 3 of 12 seeds met the gap target against 0 of 12 with one game, and
    # no control widened
    restarts: int = Field(3, ge=1)
    # selection and stopping
    selection: Literal[SELECTIONS] = "es_dice"  # es_dice (with the Dice tolerance) | last
    tolerance: float = 0.01
    # also require the fresh probe's validation AUC at most this (1.0: no leakage requirement)
    max_probe_auc: float = Field(1.0, ge=0.5, le=1.0)
    patience: int = Field(0, ge=0)  # epochs without a better selected score before stopping (0: never)
    # latent cache: auto = in memory unless `augment`
    cache: Literal[CACHE_MODES] = "auto"
    # 0: every process caches the whole training split (N processes == 1 process); K > 0: the
    # shard-stratified batch order over K shards, each of N processes caches only its 1/N (K % N == 0)
    cache_shards: int = Field(0, ge=0)
    # storage dtype of the cached latents (lookups are cast back): auto = bf16 (fp16 where the GPU lacks bf16)
    # on GPUs, fp32 on the CPU
    cache_dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # the on-disk store's folder (default: the run folder's latent_cache/); stores are keyed by the deployed
    # weights, the data, the sites, the dtype and the samples held, so runs naming one folder reuse them.
    # With cache auto, a folder given here means the cache goes to disk
    cache_dir: str | None = None
    augment: bool = False  # random horizontal flips (disables the cache)
    # autocast of the game's forward passes: auto = bf16 on GPUs that have it, else fp32 (the CPU)
    precision: Literal[GAME_PRECISIONS] = "auto"
    seed: int = Field(0, ge=0)


def load_apple_config(path: str | os.PathLike | None) -> tuple[AppleConfig, dict[str, Any]]:
    """(APPLE options, a baseline's options) from a YAML file; defaults if None.

    The file holds APPLE's keys at the top level, or in sections `apple:` (APPLE's keys) and
    `options:` (the options of a baseline run with `mitigate --method NAME`).
    """
    if path is None:
        return AppleConfig(), {}
    data = read_config_file(path)
    if "apple" in data or "options" in data:
        extra = sorted(set(data) - {"apple", "options"})
        if extra:
            raise InputError(f"{path}: unknown key '{extra[0]}' (a file with an 'apple:' or 'options:' section "
                             "holds nothing else at the top level)")
        apple, options = data.get("apple") or {}, data.get("options") or {}
    else:
        apple, options = data, {}
    if not isinstance(apple, dict) or not isinstance(options, dict):
        raise InputError(f"{path}: 'apple' and 'options' must be mappings of keys to values")
    return validate_settings(apple, AppleConfig, str(path)), dict(options)
