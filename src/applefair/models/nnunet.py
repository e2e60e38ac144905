"""nnU-Net v2 networks as applefair segmentors: raw image in, nnU-Net's logits out.

The network is nnU-Net's own: the class and keyword arguments of the plans' configuration
(`configurations[cfg]['architecture']`), built with `dynamic_network_architectures` as nnU-Net
builds it. Before it runs nnU-Net's per-channel intensity normalisation (the scheme the plans name:
ZScore, CT with the dataset's foreground intensity properties, ...), and the image is padded as
nnU-Net's predictor pads it (centred, zeros after normalisation) to at least the patch size.

What differs from `nnUNetPredictor` (documented in docs/models.md): no test-time mirroring, no
resampling (give images at the configuration's spacing), no crop to the nonzero region (equal when
no border row/column of the image is all zero), and an image larger than the patch is run whole
instead of by sliding window. Names in the plans are resolved only inside
`dynamic_network_architectures.architectures` (networks) and `torch.nn` (layers), so a plans file
cannot make applefair import anything else.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from applefair.errors import InputError
from applefair.models.registry import ModelSpec, register

NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
_NETWORKS = "dynamic_network_architectures.architectures."
_EPS = 1e-8


def _locate(path: str, prefix: str, what: str) -> type:
    """The class at dotted `path`, which must lie under `prefix` (nothing else is imported)."""
    if not isinstance(path, str) or not path.startswith(prefix) or path.count(".") < 2:
        raise InputError(f"nnU-Net plans: {what} '{path}' is not supported (expected a class under {prefix}*)")
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        obj = None
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise InputError(f"nnU-Net plans: {what} '{path}' was not found (is dynamic_network_architectures "
                         f"installed and recent enough?)")
    return obj


def build_network(architecture: dict, in_channels: int, out_channels: int) -> nn.Module:
    """nnU-Net's network from a plans 'architecture' entry, as `get_network_from_plans` builds it
    for inference (no deep supervision)."""
    try:
        cls_name = architecture["network_class_name"]
        kwargs = dict(architecture["arch_kwargs"])
        needs_import = list(architecture.get("_kw_requires_import", []))
    except (KeyError, TypeError) as exc:
        raise InputError(f"nnU-Net plans: 'architecture' lacks {exc} (expected network_class_name, arch_kwargs, "
                         f"_kw_requires_import)") from None
    if cls_name.startswith("dynamic_network_architectures.") and not cls_name.startswith(_NETWORKS):
        cls_name = _NETWORKS + cls_name.split(".", 1)[1].split("architectures.", 1)[-1]
    cls = _locate(cls_name, _NETWORKS, "network class")
    for key in needs_import:
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key], "torch.nn.", f"arch_kwargs.{key}")
    try:
        return cls(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InputError(f"nnU-Net plans: cannot build {cls_name} from arch_kwargs ({exc})") from None


class NnUNetNormalization(nn.Module):
    """nnU-Net's per-channel intensity normalisation (nnunetv2.preprocessing.normalization), in torch.

    `schemes[c]` = {"scheme": class name, "use_mask_for_norm": bool, "intensity": the channel's
    foreground intensity properties (mean, std, percentile_00_5, percentile_99_5; CT only)}.
    ZScore with `use_mask_for_norm` normalises inside the nonzero region (holes filled in 3-D, as
    nnU-Net's `create_nonzero_mask` does; on a 2-D image its fill changes nothing) and leaves zeros outside.
    """

    def __init__(self, schemes: list[dict]):
        super().__init__()
        self.schemes = [dict(s) for s in schemes]
        for c, s in enumerate(self.schemes):
            if s.get("scheme") not in NORMALIZATIONS:
                raise InputError(f"nnU-Net plans: normalization scheme '{s.get('scheme')}' of channel {c} is not "
                                 f"supported (expected one of: {', '.join(NORMALIZATIONS)})")
            if s["scheme"] == "CTNormalization":
                props = s.get("intensity") or {}
                missing = [k for k in ("mean", "std", "percentile_00_5", "percentile_99_5") if k not in props]
                if missing:
                    raise InputError(f"nnU-Net plans: foreground_intensity_properties_per_channel['{c}'] lacks "
                                     f"{', '.join(missing)} (CTNormalization needs them)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.schemes):
            raise InputError(f"nnU-Net model: the image has {x.shape[1]} channel(s), the model expects "
                             f"{len(self.schemes)}")
        x = x.float()
        mask = None
        if any(s.get("use_mask_for_norm") for s in self.schemes):  # nonzero in any channel, before normalising
            mask = _fill_holes((x != 0).any(dim=1, keepdim=True))
        return torch.cat([self._one(x[:, c:c + 1], s, mask) for c, s in enumerate(self.schemes)], dim=1)

    def _one(self, x: torch.Tensor, s: dict, mask: torch.Tensor | None) -> torch.Tensor:
        dims = tuple(range(1, x.ndim))
        scheme = s["scheme"]
        if scheme == "ZScoreNormalization":
            if mask is not None and s.get("use_mask_for_norm"):
                return _masked_zscore(x, mask, dims)
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
            return (x - mean) / std.clamp_min(_EPS)
        if scheme == "CTNormalization":
            p = s["intensity"]
            x = x.clamp(float(p["percentile_00_5"]), float(p["percentile_99_5"]))
            return (x - float(p["mean"])) / max(float(p["std"]), _EPS)
        if scheme == "RescaleTo01Normalization":
            x = x - x.amin(dim=dims, keepdim=True)
            return x / x.amax(dim=dims, keepdim=True).clamp_min(_EPS)
        if scheme == "RGBTo01Normalization":
            return x / 255.0
        return x  # NoNormalization


def _fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """nnU-Net's `create_nonzero_mask` fills holes; a 2-D image is a one-slice volume to it, where every
    pixel touches the border, so only 3-D masks change."""
    if mask.ndim != 5:
        return mask
    from scipy.ndimage import binary_fill_holes

    filled = [torch.from_numpy(binary_fill_holes(m[0].cpu().numpy()))[None] for m in mask]
    return torch.stack(filled).to(mask.device)


def _masked_zscore(x: torch.Tensor, mask: torch.Tensor, dims: tuple) -> torch.Tensor:
    n = mask.sum(dim=dims, keepdim=True).clamp_min(1)
    mean = (x * mask).sum(dim=dims, keepdim=True) / n
    std = (((x - mean) * mask) ** 2).sum(dim=dims, keepdim=True).div(n).sqrt()
    return torch.where(mask, (x - mean) / std.clamp_min(_EPS), x)


class NnUNetSegmentor(nn.Module):
    """Raw image (B, C, *spatial) -> nnU-Net logits (B, K, *spatial): normalisation, padding, network."""

    def __init__(self, network: nn.Module, normalization: NnUNetNormalization, patch_size: list[int],
                 divisor: list[int], transpose: list[int] | None = None, input_range: list[float] | None = None):
        super().__init__()
        self.normalization = normalization
        self.network = network
        self.patch_size = [int(p) for p in patch_size]
        self.divisor = [int(d) for d in divisor]
        self.transpose = list(transpose) if transpose else list(range(len(patch_size)))
        self.input_range = [float(v) for v in input_range] if input_range else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != len(self.patch_size) + 2:
            raise InputError(f"nnU-Net model: expected a {len(self.patch_size)}-D image batch "
                             f"(B, C{', D' if len(self.patch_size) == 3 else ''}, H, W), got shape {list(x.shape)}")
        if self.input_range is not None:  # applefair's [0, 1] image back to the intensities nnU-Net saw
            lo, hi = self.input_range
            x = lo + x.float() * (hi - lo)
        x = self.normalization(x)
        perm = [0, 1] + [2 + a for a in self.transpose]
        x = x.permute(perm)
        size = list(x.shape[2:])
        target = [max(p, math.ceil(s / d) * d) for s, p, d in zip(size, self.patch_size, self.divisor, strict=True)]
        below = [(t - s) // 2 for t, s in zip(target, size, strict=True)]
        pads: list[int] = []
        for s, t, b in reversed(list(zip(size, target, below, strict=True))):
            pads += [b, t - s - b]
        y = self.network(F.pad(x, pads) if any(pads) else x)
        y = y[(slice(None), slice(None), *[slice(b, b + s) for b, s in zip(below, size, strict=True)])]
        inverse = [0, 1] + [2 + self.transpose.index(a) for a in range(len(self.transpose))]
        return y.permute(inverse).contiguous()


def network_sites(network: nn.Module, prefix: str = "network") -> tuple[str, list[str]]:
    """(bottleneck, skips) of a dynamic_network_architectures U-Net: each encoder stage's output is one
    skip (it feeds both the decoder and the next stage); the last stage is the bottleneck."""
    stages = getattr(getattr(network, "encoder", None), "stages", None)
    if not isinstance(stages, nn.Sequential) or len(stages) < 2:
        raise InputError(f"nnU-Net network {type(network).__name__}: no encoder.stages to put latent sites on "
                         f"(supported: the U-Nets of dynamic_network_architectures)")
    names = [f"{prefix}.encoder.stages.{i}" for i in range(len(stages))]
    return names[-1], names[:-1]


_TINY_ARCH = {
    "network_class_name": _NETWORKS + "unet.PlainConvUNet",
    "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


@register("nnunet", tiny={"architecture": _TINY_ARCH, "patch_size": [64, 64],
                          "normalization": [{"scheme": "ZScoreNormalization"}]},
          summary="nnU-Net v2 network + normalisation from its plans (applefair models import nnunet)")
def _nnunet(architecture: dict, patch_size: list, normalization: list, out_channels: int = 2,
            head: str = "softmax", transpose: list | None = None, input_range: list | None = None,
            ) -> tuple[nn.Module, str, list[str], dict]:
    norm = NnUNetNormalization(normalization)
    network = build_network(architecture, len(normalization), int(out_channels))
    strides = architecture["arch_kwargs"].get("strides") or [[1] * len(patch_size)]
    strides = [s if isinstance(s, (list, tuple)) else [s] * len(patch_size) for s in strides]
    divisor = [math.prod(int(s[a]) for s in strides) for a in range(len(patch_size))]
    if input_range is not None and (len(input_range) != 2 or float(input_range[0]) >= float(input_range[1])):
        raise InputError(f"nnunet input_range {input_range}: expected [low, high] with low < high")
    net = NnUNetSegmentor(network, norm, list(patch_size), divisor, transpose, input_range)
    site, skips = network_sites(network)
    return net, site, skips, {"head": head, "in_channels": len(normalization), "spatial_dims": len(patch_size)}


# ----------------------------------------------------------------------------- import a results folder



def checkpoint_safe_types() -> list:
    """The data-only types an nnU-Net checkpoint holds besides tensors and containers (numpy scalars in
    its training log and `_best_ema`), for `torch.load(weights_only=True)`; numpy 1.x names included."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    names = ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType", "Int64DType",
             "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType")
    dtypes = [getattr(np.dtypes, n) for n in names if hasattr(getattr(np, "dtypes", None), n)]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtypes]


def configuration_of(plans: dict, name: str, source: str) -> dict:
    """The plans' configuration `name`, its `inherits_from` parents merged in (as nnU-Net's PlansManager does)."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        have = ", ".join(configs) if isinstance(configs, dict) else "none"
        raise InputError(f"{source}: configuration '{name}' not in configurations (found: {have})")
    cfg, seen = dict(configs[name]), [name]
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise InputError(f"{source}: configuration '{seen[-1]}' inherits from '{parent}', which is "
                             f"{'circular' if parent in seen else 'not in configurations'}")
        seen.append(parent)
        cfg = {**configs[parent], **cfg}
    if cfg.get("previous_stage"):
        raise InputError(f"{source}: configuration '{name}' is a cascade stage (previous_stage "
                         f"'{cfg['previous_stage']}'); it needs the previous stage's segmentation as input, which "
                         f"is not supported (import '3d_fullres' or '2d')")
    return cfg


def nnunet_args(plans: dict, dataset: dict, configuration: str, source: str,
                input_range: list[float] | None = None) -> dict:
    """The `nnunet` registry arguments for one configuration of a plans.json + dataset.json pair."""
    cfg = configuration_of(plans, configuration, source)
    for key in ("architecture", "patch_size", "normalization_schemes"):
        if key not in cfg:
            raise InputError(f"{source}: configuration '{configuration}' has no '{key}' (is it an nnU-Net v2 "
                             f"plans file? v1 plans are not supported)")
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{source}: dataset.json has no channel_names (expected e.g. {{\"0\": \"CT\"}})")
    schemes, masks = list(cfg["normalization_schemes"]), list(cfg.get("use_mask_for_norm", []))
    if len(schemes) != len(channels):
        raise InputError(f"{source}: {len(schemes)} normalization_schemes for {len(channels)} channels in "
                         f"dataset.json")
    props = plans.get("foreground_intensity_properties_per_channel", {})
    normalization = [{"scheme": str(s).rsplit(".", 1)[-1], "use_mask_for_norm": bool(masks[c]) if c < len(masks)
                      else False, "intensity": props.get(str(c), props.get(c, {}))} for c, s in enumerate(schemes)]
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{source}: dataset.json has no labels (expected e.g. {{\"background\": 0, \"lesion\": 1}})")
    regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    heads = [k for k in labels if k != "ignore" and not (regions and k == "background")]
    transpose = list(plans.get("transpose_forward", [0, 1, 2]))
    dims = len(cfg["patch_size"])
    if dims == 2:
        if transpose[0] != 0:
            raise InputError(f"{source}: transpose_forward {transpose} moves the slice axis; a 2d configuration "
                             f"of such plans cannot take a 2-D image")
        transpose = [a - 1 for a in transpose[1:]]
    return {"architecture": cfg["architecture"], "patch_size": [int(p) for p in cfg["patch_size"]],
            "normalization": normalization, "out_channels": len(heads), "head": "sigmoid" if regions else "softmax",
            "transpose": transpose, "input_range": list(input_range) if input_range else None}


def import_nnunet(results: str | os.PathLike, out: str | os.PathLike, configuration: str = "2d",
                  fold: str | int = 0, checkpoint: str = "checkpoint_final.pth",
                  input_range: list[float] | None = None, overwrite: bool = False) -> ModelSpec:
    """Turn a trained nnU-Net v2 results folder (plans.json, dataset.json, fold_K/CHECKPOINT) into an
    applefair model folder at `out`. The checkpoint is read with `weights_only=True`."""
    from applefair.models.checkpoints import apply_state, load_weights_only
    from applefair.models.importing import check_runs, read_config, write_model_folder
    from applefair.models.registry import create_segmentor

    results = Path(results)
    plans = read_config(results / "plans.json", "nnU-Net plans")
    dataset = read_config(results / "dataset.json", "nnU-Net dataset.json")
    args = nnunet_args(plans, dataset, configuration, str(results / "plans.json"), input_range)
    net, spec = create_segmentor("nnunet", **args)
    path = results / f"fold_{fold}" / checkpoint
    ckpt = load_weights_only(path, checkpoint_safe_types())
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        keys = ", ".join(map(str, list(ckpt)[:6])) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not an nnU-Net checkpoint (no 'network_weights'; found {keys})")
    trained = (ckpt.get("init_args") or {}).get("configuration")
    if trained is not None and trained != configuration:
        raise InputError(f"{path}: checkpoint of configuration '{trained}', but --configuration is '{configuration}'")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["network_weights"].items()
             if torch.is_tensor(v)}
    apply_state(net.network, f"nnunet {configuration}", state, path)
    check_runs(net, spec, path, size=max(args["patch_size"]))
    source = {"format": "nnunet", "results": str(results.resolve()), "configuration": configuration,
              "fold": str(fold), "checkpoint": checkpoint, "trainer_name": ckpt.get("trainer_name"),
              "inference_allowed_mirroring_axes": list(ckpt.get("inference_allowed_mirroring_axes") or []),
              "epochs_trained": ckpt.get("current_epoch")}
    write_model_folder(out, net, spec, source, {"plans.json": results / "plans.json",
                                                "dataset.json": results / "dataset.json"}, overwrite=overwrite)
    return spec
