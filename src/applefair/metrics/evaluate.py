"""Run a segmentor over a split, score every sample, and collect the latents the decoder sees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.device import module_device, to_device
from applefair.engine.progress import progress_bar
from applefair.metrics.leakage import pool_latent
from applefair.metrics.segmentation import per_sample_metrics
from applefair.models.forward import segment
from applefair.models.sites import find_module


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one output channel (binary head), softmax for several (multi-class head)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


@torch.no_grad()
def score_and_capture(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec, *,
                      metrics: Sequence[str] = ("dice", "iou"), sites: Sequence[str] = (),
                      class_names: Sequence[str] | None = None, nsd_tolerance: float = 2.0,
                      batch_size: int = 32, device: str | torch.device | None = None, quiet: bool = True,
                      around: Callable[[dict], AbstractContextManager] | None = None,
                      ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per-sample table (id, group, one column per metric) and pooled latents per site, (N, F) each.

    Latents are what each site's module outputs; for a `PatchedSegmentor` whose perturbers are
    enabled that is f_p (the decoder's input), and f_o when they are disabled. Batches go to
    `device`, by default the one the model lives on. `around(batch)`, if given, is a context
    entered around each batch's forward pass (APPLE's latent cache replays the encoder with it).
    """
    device = module_device(model) if device is None else torch.device(device)
    was = model.training
    model.eval()
    pooled: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    patched_sites = set(getattr(model, "sites", []))
    hooks = []
    for s in sites:
        if s in patched_sites:
            continue
        target = model.net if hasattr(model, "net") and patched_sites else model
        hooks.append(find_module(target, s).register_forward_hook(
            lambda _m, _i, out, s=s: pooled[s].append(pool_latent(out.detach().float()).cpu())))
    rows = []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        with progress_bar(quiet) as bar:
            task = bar.add_task("evaluate", total=len(loader), info="")
            for batch in loader:
                with around(batch) if around is not None else nullcontext():
                    logits = segment(model, to_device(batch, device))
                for s in sites:
                    if s in patched_sites:
                        pooled[s].append(pool_latent(model.latents[s][1].detach().float()).cpu())
                scores = per_sample_metrics(_probabilities(logits.float()).cpu(), batch["mask"], metrics=metrics,
                                            class_names=class_names, nsd_tolerance=nsd_tolerance)
                for j, idx in enumerate(batch["index"].tolist()):
                    row = {"id": dataset.ids[idx], "group": groups.name(int(batch["group"][j]))}
                    row.update({k: float(v[j]) for k, v in scores.items()})
                    rows.append(row)
                bar.update(task, advance=1)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["id", "group", *metrics])
    return frame, {s: torch.cat(v).numpy() if v else np.zeros((0, 0)) for s, v in pooled.items()}


def predict_scores(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec,
                   batch_size: int = 32, device: str | torch.device | None = None, *,
                   around: Callable[[dict], AbstractContextManager] | None = None,
                   metrics: Sequence[str] = ("dice", "iou"), class_names: Sequence[str] | None = None,
                   nsd_tolerance: float = 2.0) -> pd.DataFrame:
    """Per-sample table: id, group (name or 'unknown'), and one column per metric (default dice, iou)."""
    frame, _ = score_and_capture(model, dataset, groups, metrics=metrics, class_names=class_names,
                                 nsd_tolerance=nsd_tolerance, batch_size=batch_size, device=device, around=around)
    return frame
