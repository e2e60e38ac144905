"""Inference overhead: what a deployed model with APPLE's default patch costs per call, next to the model.

Latency is wall time per call with torch's thread count fixed (`timing.fixed_threads`, recorded),
the deployed and the patched model timed in interleaved rounds until the ratio's bootstrap
interval is narrower than the target's 10% (or a time limit is reached; `ci_ok` says which).
Parameters and floating-point operations (counted by torch, load-independent) are reported beside
it. The perturber is the one `AppleConfig()` builds by default, read at run time.
"""

from __future__ import annotations

import copy

import torch

from applefair.engine.device import to_device
from applefair.workflows.bench.timing import interleaved


def flops(fn) -> int:
    """Floating-point operations of one call, counted by torch (convolutions, matmuls): a cost that,
    unlike latency on a shared machine, does not depend on the load."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def blob_batch(b: int, size: int, seed: int, device: torch.device | str = "cpu") -> dict:
    """Random images with a disc mask each (SAM-like models derive their prompts from the mask)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 5) ** 2).float()
    batch = {"image": torch.rand(b, 1, size, size, generator=g), "mask": mask.expand(b, 1, size, size).clone(),
             "group": torch.zeros(b, dtype=torch.long), "index": torch.arange(b)}
    return to_device(batch, torch.device(device))


def default_perturbers(net: torch.nn.Module, spec, example: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    """APPLE's default perturbers for `net` (`AppleConfig()` as it is now: kind, width, sites, options)."""
    from applefair.apple.config import AppleConfig
    from applefair.apple.game import decoder_inputs
    from applefair.apple.patch import perturbers_for

    cfg = AppleConfig()
    sites = list(cfg.sites or (decoder_inputs(spec.site, list(spec.skip_sites)) if cfg.perturb == "all"
                               else [spec.site]))
    made = perturbers_for(net, sites, example, cfg.width, cfg.perturber, cfg.max_params_ratio,
                          global_branch=cfg.global_branch, num_res_blocks=cfg.res_blocks,
                          normalize=cfg.normalize == "instance")
    return {s: m.to(device).eval() for s, m in made.items()}


def inference_overhead(name: str, size: int, repeats: int, tiny: bool = False, seed: int = 0,
                       widths: tuple[int, ...] = (8, 16, 32), device: str = "cpu", max_seconds: float = 60.0,
                       max_repeats: int = 200, batches: tuple[int, ...] = (1, 16), small: bool = True,
                       **args) -> dict:
    """Latency (each of `batches`), FLOPs and parameters of the deployed model vs the model with APPLE's
    default patch; `small`: also the smallest option (two 3x3 convs of width 8) in the same rounds.
    `repeats` is the least number of rounds; parameters are also given for the U shape at `widths`."""
    from applefair.apple.config import AppleConfig
    from applefair.apple.patch import PatchedSegmentor, perturbers_for
    from applefair.models.forward import segment
    from applefair.models.registry import create_segmentor

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    net, spec = create_segmentor(name, tiny=tiny, **args)
    net.to(dev).eval()
    cfg = AppleConfig()
    example = blob_batch(2, size, seed, dev)
    deployed_params = sum(p.numel() for p in net.parameters())
    by_width = {}
    for w in widths:  # the paper's U shape at each width
        pert = perturbers_for(net, [spec.site], example, w, "unet", global_branch=cfg.global_branch,
                              num_res_blocks=cfg.res_blocks)
        by_width[str(w)] = round(sum(p.numel() for m in pert.values() for p in m.parameters()) / deployed_params, 5)
    # each variant patches its own copy of the deployed weights, so that all can be timed in the same rounds
    patched = PatchedSegmentor(copy.deepcopy(net), default_perturbers(net, spec, example, dev)).eval()
    conv8 = {s: m.to(dev) for s, m in perturbers_for(net, [spec.site], example, 8, "conv").items()}
    small_patched = PatchedSegmentor(copy.deepcopy(net), conv8).eval()
    models = {"deployed": net, "mitigated": patched, **({"conv_w8": small_patched} if small else {})}
    specs = patched.perturber_specs()
    out = {"model": name, "args": spec.args, "tiny": tiny, "sites": patched.sites, "image_size": size,
           "device": str(dev), "threads": torch.get_num_threads(), "clock": "wall",
           "perturber": {"kind": specs[patched.sites[0]]["kind"], "width": specs[patched.sites[0]].get("width"),
                         "config": cfg.perturber},
           "deployed_params": deployed_params}
    with torch.no_grad():
        for b in batches:
            batch = blob_batch(b, size, seed, dev)
            timed = interleaved({k: (lambda m=m, x=batch: segment(m, x)) for k, m in models.items()}, "deployed",
                                min_repeats=repeats, max_repeats=max_repeats, max_seconds=max_seconds, cuda=cuda,
                                seed=seed)
            out[f"latency_ms_b{b}"] = {k: timed["median_ms"][k] for k in ("deployed", "mitigated")}
            out[f"latency_ratio_b{b}"] = timed["ratios"]["mitigated"]["ratio"]
            out[f"latency_ratio_b{b}_ci95"] = timed["ratios"]["mitigated"]["ci95"]
            out[f"latency_b{b}"] = timed
        one = blob_batch(1, size, seed, dev)
        counted = {k: flops(lambda m=m: segment(m, one)) for k, m in
                   (("deployed", net), ("mitigated", patched), ("conv_w8", small_patched))}
    pert_params = sum(p.numel() for p in patched.perturbers.parameters())
    out["perturber_params"] = pert_params
    out["params_ratio"] = round(pert_params / deployed_params, 5)
    out["params_ratio_by_width"] = by_width
    if counted["deployed"]:
        out["flops_b1"] = counted
        out["flops_ratio"] = round(counted["mitigated"] / counted["deployed"], 5)
    conv8_params = sum(p.numel() for m in conv8.values() for p in m.parameters())
    out["conv_w8"] = {"params_ratio": round(conv8_params / deployed_params, 5),
                      "flops_ratio": round(counted["conv_w8"] / counted["deployed"], 5) if counted["deployed"]
                      else None,
                      **({f"latency_ratio_b{b}": out[f"latency_b{b}"]["ratios"]["conv_w8"]["ratio"] for b in batches}
                         if small else {})}
    patched.remove()
    small_patched.remove()
    return out
