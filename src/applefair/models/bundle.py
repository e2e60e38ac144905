"""MONAI bundles as applefair segmentors: the bundle's `network_def` built by MONAI's ConfigParser,
its weights read weights-only, and the intensity transforms of its preprocessing applied in front.

Reading a bundle runs no code from it: `network_def` may only name classes of `monai.networks`
(short names such as "UNet" are looked up there) and may hold no `$` expressions; references
(`@id`) and macros (`%`) are resolved to plain values first. Of the preprocessing, only intensity
transforms are applied (`SUPPORTED`, with MONAI's own array transforms); loading and type
transforms have nothing to do on a tensor; spatial and other transforms are listed as not applied
(the images must already have the bundle's orientation, spacing and size).
"""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path

import torch
from torch import nn

from applefair.errors import InputError
from applefair.models.registry import ModelSpec, register

# intensity transforms applied to the image (dictionary and array names; MONAI's array class does the work)
SUPPORTED = ("ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRangePercentiles",
             "ThresholdIntensity", "ShiftIntensity", "ClipIntensityPercentiles")
# nothing to do on a tensor that is already in memory, channel first, float
NOTHING_TO_DO = ("LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType", "ToDevice",
                 "Identity", "SqueezeDim", "DeleteItems", "SelectItems", "CopyItems")
_NETWORK_MODULES = ("monai.networks.nets", "monai.networks.blocks", "monai.networks.layers")
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def _network_target(target: object, where: str) -> str:
    """The full dotted path of a network_def `_target_`, which must be a class of monai.networks."""
    if not isinstance(target, str) or not target:
        raise InputError(f"{where}: _target_ {target!r} is not a class name")
    if "." in target:
        module, _, name = target.rpartition(".")
        if not module.startswith("monai.networks"):
            raise InputError(f"{where}: _target_ '{target}' is outside monai.networks; a bundle's network_def may "
                             f"only name MONAI networks here (import your own class with `models import module`)")
        candidates = [module]
    else:
        name, candidates = target, list(_NETWORK_MODULES)
    for module in candidates:
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            obj = None
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return f"{module}.{name}"
    raise InputError(f"{where}: _target_ '{target}' is not a network class of monai.networks")


def plain_config(parser, item: object, where: str, depth: int = 0) -> object:
    """`item` with every `@id` reference replaced by the referenced (plain) config; `$` expressions,
    which would run code, are refused."""
    if depth > 32:
        raise InputError(f"{where}: references nest too deeply (a cycle?)")
    if isinstance(item, dict):
        return {k: plain_config(parser, v, f"{where}.{k}", depth) for k, v in item.items()}
    if isinstance(item, list):
        return [plain_config(parser, v, f"{where}[{i}]", depth) for i, v in enumerate(item)]
    if isinstance(item, str) and item.startswith("$"):
        raise InputError(f"{where}: expression '{item[:80]}' is not supported (expressions run code; write the "
                         f"value out)")
    if isinstance(item, str) and item.startswith("@"):
        ref = item[1:].replace("#", "::")
        if ref not in parser:
            raise InputError(f"{where}: reference '{item}' is not defined in the bundle config")
        return plain_config(parser, copy.deepcopy(parser.get(ref)), f"{where}->{ref}", depth + 1)
    return item


def network_config(parser, where: str) -> dict:
    """The bundle's network_def as a plain config whose every `_target_` is a full monai.networks path."""
    if "network_def" not in parser:
        raise InputError(f"{where}: no 'network_def' (expected the network's config under that key)")
    config = plain_config(parser, parser.get("network_def"), f"{where}: network_def")

    def check(node, path):
        if isinstance(node, dict):
            if "_target_" in node:
                bad = [k for k in node if k.startswith("_") and k not in ("_target_", "_desc_")]
                if bad:
                    raise InputError(f"{path}: key '{bad[0]}' is not supported in network_def")
                node["_target_"] = _network_target(node["_target_"], path)
            for k, v in node.items():
                check(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                check(v, f"{path}[{i}]")

    if not isinstance(config, dict) or "_target_" not in config:
        raise InputError(f"{where}: network_def has no _target_ (expected e.g. {{\"_target_\": \"UNet\", ...}})")
    check(config, f"{where}: network_def")
    return config


def build_network(config: dict) -> nn.Module:
    """The network of a plain network_def config, instantiated by MONAI's ConfigParser."""
    from monai.bundle import ConfigParser

    try:
        return ConfigParser({"network_def": copy.deepcopy(config)}).get_parsed_content("network_def")
    except Exception as exc:  # noqa: BLE001 - MONAI wraps constructor errors in several types
        msg = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"bundle network_def {config.get('_target_')}: cannot be built ({msg})") from None


def preprocessing_steps(parser, image_key: str, where: str) -> tuple[list[dict], list[str]]:
    """(steps applied, transforms not applied) of the bundle's `preprocessing`; a step is
    {"transform": array transform name, "args": keyword arguments}."""
    if "preprocessing" not in parser:
        return [], []
    raw = plain_config_lenient(parser, parser.get("preprocessing"))
    items = raw.get("transforms", []) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    steps, skipped = [], []
    for i, t in enumerate(items):
        target = str(t.get("_target_", "?")) if isinstance(t, dict) else "?"
        name = target.rsplit(".", 1)[-1]
        base = name[:-1] if name.endswith("d") and name[:-1] in SUPPORTED + NOTHING_TO_DO else name
        if base in NOTHING_TO_DO:
            continue
        keys = t.get("keys", image_key) if isinstance(t, dict) else image_key
        keys = [keys] if isinstance(keys, str) else list(keys) if isinstance(keys, (list, tuple)) else []
        if image_key not in keys:
            continue  # applies to the label or other items only
        args = {k: v for k, v in t.items() if not k.startswith("_") and k not in ("keys", "allow_missing_keys")}
        bad = [k for k, v in args.items() if isinstance(v, str) and v[:1] in "$@%"]
        if base not in SUPPORTED or bad:
            skipped.append(f"{name} (transforms[{i}]{': expression in ' + bad[0] if bad else ''})")
            continue
        if base == "NormalizeIntensity":
            args.pop("dtype", None)
        steps.append({"transform": base, "args": args})
    return steps, skipped


def plain_config_lenient(parser, item: object, depth: int = 0) -> object:
    """Like `plain_config`, but an expression stays a string (the preprocessing is read, never instantiated)."""
    if depth > 32:
        return item
    if isinstance(item, dict):
        return {k: plain_config_lenient(parser, v, depth) for k, v in item.items()}
    if isinstance(item, list):
        return [plain_config_lenient(parser, v, depth) for v in item]
    if isinstance(item, str) and item.startswith("@") and item[1:].replace("#", "::") in parser:
        return plain_config_lenient(parser, copy.deepcopy(parser.get(item[1:].replace("#", "::"))), depth + 1)
    return item


class BundleSegmentor(nn.Module):
    """Raw image (B, C, *spatial) -> logits: the bundle's intensity preprocessing, then its network."""

    def __init__(self, network: nn.Module, steps: list[dict], input_range: list[float] | None = None):
        super().__init__()
        import monai.transforms as mt

        self.network = network
        self.steps = [dict(s) for s in steps]
        self.input_range = [float(v) for v in input_range] if input_range else None
        self._transforms = []
        for s in self.steps:
            try:
                self._transforms.append(getattr(mt, s["transform"])(**s["args"]))
            except (TypeError, ValueError) as exc:
                raise InputError(f"bundle preprocessing {s['transform']}: bad arguments {s['args']} ({exc})") from None

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The preprocessing of each image, with MONAI's transforms (per image, as a bundle runs them)."""
        if self.input_range is not None:
            lo, hi = self.input_range
            x = lo + x.float() * (hi - lo)
        if not self._transforms:
            return x.float()
        out = []
        for img in x.float():
            for t in self._transforms:
                img = t(img)
            out.append(img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img))
        return torch.stack(out).to(x.device, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(x))


def monai_sites(network: nn.Module, example: torch.Tensor, prefix: str = "network") -> tuple[str, list[str]]:
    """(bottleneck, skips) of the MONAI networks the zoo knows; others: the deepest feature map (a guess)."""
    from monai.networks import nets

    from applefair.models.sites import attention_unet_sites, deepest_site, unet_bottleneck_site, unet_skip_sites

    if isinstance(network, nets.UNet):
        site, skips = unet_bottleneck_site(network), unet_skip_sites(network)
    elif isinstance(network, nets.AttentionUnet):
        site, skips = attention_unet_sites(network)
    elif isinstance(network, nets.DynUNet):
        site, skips = "bottleneck", ["input_block"] + [f"downsamples.{i}" for i in range(len(network.downsamples))]
    elif isinstance(network, nets.SegResNet):
        n = len(network.down_layers)
        site, skips = f"down_layers.{n - 1}", [f"down_layers.{i}" for i in range(n - 1)]
    elif isinstance(network, nets.BasicUNet):
        site, skips = "down_4", ["conv_0", "down_1", "down_2", "down_3"]
    else:
        return f"{prefix}.{deepest_site(network, example)}", []
    return f"{prefix}.{site}", [f"{prefix}.{s}" for s in skips]


@register("monai_bundle", summary="a MONAI bundle's network_def + intensity preprocessing (models import bundle)")
def _monai_bundle(network_def: dict, preprocessing: list | None = None, input_range: list | None = None,
                  head: str = "sigmoid", in_channels: int = 1, spatial_dims: int = 2, site: str = "",
                  skip_sites: list | None = None) -> tuple[nn.Module, str, list[str], dict]:
    network = build_network(network_def)
    net = BundleSegmentor(network, list(preprocessing or []), input_range)
    if not site:
        example = torch.rand(1, int(in_channels), *[64] * int(spatial_dims))
        site, guessed_skips = monai_sites(network, example)
        skip_sites = skip_sites or guessed_skips
    return net, site, list(skip_sites or []), {"head": head, "in_channels": int(in_channels),
                                               "spatial_dims": int(spatial_dims)}


def _sigmoid_activation(parser) -> bool:
    """Whether the bundle's postprocessing applies a sigmoid (multi-label outputs) rather than a softmax."""
    if "postprocessing" not in parser:
        return False
    raw = plain_config_lenient(parser, parser.get("postprocessing"))
    items = raw.get("transforms", []) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    return any(isinstance(t, dict) and str(t.get("_target_", "")).rsplit(".", 1)[-1].startswith("Activations")
               and t.get("sigmoid") is True for t in items)


def _find(bundle: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise InputError(f"{bundle}: no configs/{names[0]} (expected the bundle's {what})")


def import_bundle(bundle: str | os.PathLike, out: str | os.PathLike, weights: str | os.PathLike | None = None,
                  input_range: list[float] | None = None, site: str = "", skip_sites: list[str] | None = None,
                  head: str | None = None, overwrite: bool = False) -> tuple[ModelSpec, list[str]]:
    """Turn a MONAI bundle folder into an applefair model folder; returns (spec, preprocessing
    transforms not applied)."""
    from monai.bundle import ConfigParser

    from applefair.models.checkpoints import apply_state, read_checkpoint
    from applefair.models.importing import check_runs, read_config, write_model_folder
    from applefair.models.registry import create_segmentor

    bundle = Path(bundle)
    config_path = _find(bundle, CONFIG_NAMES, "inference config")
    parser = ConfigParser(read_config(config_path, "bundle config"))
    meta_path = bundle / "configs" / "metadata.json"
    meta = read_config(meta_path, "bundle metadata") if meta_path.is_file() else {}
    try:
        parser.resolve_macro_and_relative_ids()
    except Exception as exc:  # noqa: BLE001 - a macro naming a missing file or id
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{config_path}: cannot resolve its macros/references ({msg})") from None
    fmt = (meta.get("network_data_format") or {}) if isinstance(meta, dict) else {}
    image_key = next(iter(fmt.get("inputs") or {"image": None}))
    image_fmt = (fmt.get("inputs") or {}).get(image_key) or {}
    out_fmt = next(iter((fmt.get("outputs") or {}).values()), {}) or {}
    network_def = network_config(parser, str(config_path))
    kwargs = {k: v for k, v in network_def.items() if not k.startswith("_")}
    in_channels = int(image_fmt.get("num_channels", kwargs.get("in_channels", 1)))
    spatial_dims = len(image_fmt.get("spatial_shape") or []) or int(kwargs.get("spatial_dims", 2))
    steps, skipped = preprocessing_steps(parser, image_key, str(config_path))
    if head is None:
        channels = int(out_fmt.get("num_channels", kwargs.get("out_channels", 1)))
        head = "sigmoid" if channels == 1 or _sigmoid_activation(parser) else "softmax"
    args = {"network_def": network_def, "preprocessing": steps, "input_range": list(input_range) if input_range
            else None, "head": head, "in_channels": in_channels, "spatial_dims": spatial_dims, "site": site,
            "skip_sites": list(skip_sites or [])}
    net, spec = create_segmentor("monai_bundle", **args)
    spec.args.update(site=spec.site, skip_sites=spec.skip_sites)
    found = [bundle / "models" / f"model.{ext}" for ext in ("safetensors", "pt")]  # a bundle's own weight files
    weights = Path(weights) if weights else next((f for f in found if f.is_file()), found[-1])
    apply_state(net.network, f"bundle {network_def['_target_'].rsplit('.', 1)[-1]}", read_checkpoint(weights),
                weights)
    check_runs(net, spec, bundle)
    source = {"format": "monai_bundle", "bundle": str(bundle.resolve()), "weights": str(weights),
              "name": meta.get("name") if isinstance(meta, dict) else None,
              "version": meta.get("version") if isinstance(meta, dict) else None,
              "preprocessing_applied": [s["transform"] for s in steps], "preprocessing_not_applied": skipped}
    copies = {config_path.name: config_path, **({"metadata.json": meta_path} if meta_path.is_file() else {})}
    write_model_folder(out, net, spec, source, copies, overwrite=overwrite)
    return spec, skipped
