"""The evaluation primitive: score a model on a split and capture what its decoder receives.

Every evaluation of the package goes through `score`: APPLE's per-epoch validation, the
baselines' selection, `evaluate`, `mitigate`, `demo` and each `compare` cell. One pass over the
split gives the per-sample table (id, group, one column per metric) and, for each captured module
(a latent site: the perturbed site, a skip the decoder reads), the pooled statistics of its output
per sample, and when asked (`keep_maps`) the maps themselves, downsampled to at most 16 x 16 and stored
as float16, for the spatial probe. Capturing hooks the site's module, so for a patched model it sees
f_p (the perturber's hook runs first) and f_o when the perturbers are switched off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine.device import module_device, to_device
from applefair.engine.progress import progress_bar
from applefair.metrics.conventions import Convention, get_convention
from applefair.metrics.frame import MetricFrame
from applefair.metrics.leakage import ALL_PROBES, pool_latent, probe_auc, site_leakage
from applefair.metrics.segmentation import per_sample_metrics
from applefair.metrics.spatial import spatial_maps
from applefair.models.forward import segment
from applefair.models.sliding import merge_window_rows, windows_per_sample


@dataclass
class Scored:
    """One model on one split: per-sample scores, pooled decoder inputs per site, the groups."""

    per_sample: pd.DataFrame
    latents: dict[str, np.ndarray]
    group_ids: np.ndarray
    groups: GroupSpec
    convention: Convention = field(default_factory=get_convention)  # how the per-sample scores were computed
    predictions: list[np.ndarray] | None = None  # per sample, when asked for: binary mask or label map
    maps: dict[str, np.ndarray] | None = None  # per site, when asked for: (N, C, h, w) float16, h, w <= 16
    roles: dict[str, str] = field(default_factory=dict)  # per site: perturbed, skip or bottleneck (when known)
    _frames: dict = field(default_factory=dict, repr=False)

    def frame(self, *, bootstrap: int = 0, seed: int = 0, level: float = 0.95) -> MetricFrame:
        """The per-group metrics (with bootstrap CIs when `bootstrap` > 0); computed once per setting."""
        key = (bootstrap, seed, level)
        if key not in self._frames:
            self._frames[key] = MetricFrame(self.per_sample, self.groups.groups, attribute=self.groups.attribute,
                                            bootstrap=bootstrap, seed=seed, level=level, convention=self.convention)
        return self._frames[key]

    def probe_auc(self, sites: Sequence[str] | None = None, seed: int = 0) -> float:
        """A fresh logistic probe's cross-validated AUC on the captured sites' statistics, concatenated
        (NaN when nothing was captured or a probe cannot be fitted)."""
        names = list(self.latents) if sites is None else list(sites)
        if not names or any(self.latents[s].size == 0 for s in names):
            return math.nan
        return probe_auc(np.concatenate([self.latents[s] for s in names], 1), self.group_ids, seed=seed)

    def spatial_auc(self, seed: int = 0) -> tuple[float, str | None]:
        """The highest cross-validated spatial-probe AUC over the sites whose maps were kept, and that site: how
        readable the group is from the decoder input that gives it away most (NaN, None without maps)."""
        best, where = math.nan, None
        for site, maps in (self.maps or {}).items():
            auc = probe_auc(maps, self.group_ids, seed=seed, kind="spatial")
            if not math.isnan(auc) and (where is None or auc > best):
                best, where = auc, site
        return best, where


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one output channel (binary head), softmax for several (multi-class head)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


@torch.no_grad()
def score(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec, *,
          capture: Mapping[str, nn.Module] | None = None, metrics: Sequence[str] = ("dice", "iou"),
          class_names: Sequence[str] | None = None, nsd_tolerance: float | None = None, batch_size: int = 32,
          device: str | torch.device | None = None, quiet: bool = True,
          replay: Callable[[dict], AbstractContextManager] | None = None,
          convention: str | Convention | None = None, keep_predictions: bool = False,
          keep_maps: bool = False) -> Scored:
    """Run `model` over `dataset` (eval mode, in order), score every sample, capture decoder inputs.

    `capture`: {site name: module}; the pooled per-channel mean and std of each module's output are
    kept per sample. Batches go to `device`, by default the one the model lives on. `replay(batch)`,
    if given, is a context entered around each batch's forward pass (APPLE's latent cache replays
    the frozen encoder with it). `convention` (metric convention; `nsd_tolerance` None: its tolerance)
    scores every sample; `keep_predictions` keeps each predicted mask (binary, or a label map for a
    softmax head) to be written to disk; `keep_maps` keeps each captured site's output as a map of at most
    16 x 16 (`metrics.spatial.spatial_maps`, float16) for the spatial probe. What `score` returns is otherwise
    the same with or without them. Volumes are scored with each sample's ``spacing`` (distances in mm); a model
    that slides windows over them gives one pooled row per sample (its windows merged) and keeps no maps.
    """
    conv = get_convention(convention)
    if nsd_tolerance is not None:
        conv = conv.with_nsd_tolerance(nsd_tolerance)
    kept: list[np.ndarray] | None = [] if keep_predictions else None
    device = module_device(model) if device is None else torch.device(device)
    capture = dict(capture or {})
    was = model.training
    model.eval()
    pooled: dict[str, list[torch.Tensor]] = {s: [] for s in capture}
    maps: dict[str, list[torch.Tensor]] = {s: [] for s in capture}

    def keep(site: str, out: torch.Tensor) -> None:
        pooled[site].append(pool_latent(out.detach().float()).cpu())
        if keep_maps:
            maps[site].append(spatial_maps(out).cpu())

    hooks = [m.register_forward_hook(lambda _m, _i, out, s=s: keep(s, out)) for s, m in capture.items()]
    rows, gids = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        with progress_bar(quiet) as bar:
            task = bar.add_task("evaluate", total=len(loader), info="")
            for batch in loader:
                marks = {s: len(v) for s, v in pooled.items()}  # 3-D: where this batch's window rows start
                with replay(batch) if replay is not None else nullcontext():
                    logits = segment(model, to_device(batch, device))
                if _merge_windows(model, pooled, marks):  # maps of windows are not maps of samples: none kept
                    keep_maps = False
                probs = _probabilities(logits.float()).cpu()
                scores = per_sample_metrics(probs, batch["mask"], metrics=metrics, class_names=class_names,
                                            convention=conv, spacing=batch.get("spacing"))
                if kept is not None:
                    masks = (probs[:, 0] > 0.5).to(torch.uint8) if probs.shape[1] == 1 else probs.argmax(1)
                    kept += [m.numpy().astype(np.uint8) for m in masks]
                for j, idx in enumerate(batch["index"].tolist()):
                    gids.append(int(batch["group"][j]))
                    row = {"id": dataset.ids[idx], "group": groups.name(gids[-1])}
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
    latents = {s: torch.cat(v).numpy() if v else np.zeros((0, 0)) for s, v in pooled.items()}
    kept_maps = {s: torch.cat(v).numpy() for s, v in maps.items() if v} if keep_maps else None
    return Scored(frame, latents, np.asarray(gids, dtype=np.int64), groups, conv, kept, kept_maps)


def _merge_windows(model: nn.Module, pooled: dict[str, list[torch.Tensor]], marks: dict[str, int]) -> bool:
    """3-D sliding windows: a captured site ran once per batch of windows, so this batch added one pooled row per
    window; merge each sample's windows into its one row (`models.sliding.merge_window_rows`). True if it slid."""
    windows = windows_per_sample(model)
    if windows == 1:
        return False
    for s, rows in pooled.items():
        if len(rows) > marks[s]:
            rows[marks[s]:] = [merge_window_rows(torch.cat(rows[marks[s]:]), windows)]
    return True


def probe_leakage(before: Scored, after: Scored | None = None, *, probes: Sequence[str] = ALL_PROBES, folds: int = 5,
                  seed: int = 0, resamples: int = 1000, level: float = 0.95,
                  roles: Mapping[str, str] | None = None) -> dict[str, dict]:
    """The leakage.json content: per captured site (decoder input), fresh probes on f_o (`before`) and, for a
    patched model, on f_p (`after`), with bootstrap CIs; group counts by name; the site's role when known.
    The spatial probe runs where maps were kept (`score(..., keep_maps=True)`)."""
    groups = before.groups
    roles = {**before.roles, **(after.roles if after is not None else {}), **(roles or {})}
    out: dict[str, dict] = {}
    for s in before.latents:
        maps_before = (before.maps or {}).get(s)
        maps_after = (after.maps or {}).get(s) if after is not None else None
        entry = site_leakage(before.latents[s], after.latents.get(s) if after is not None else None,
                             before.group_ids, maps_before=maps_before, maps_after=maps_after, role=roles.get(s),
                             probes=probes, folds=folds, seed=seed, resamples=resamples, level=level)
        entry["n_per_group"] = {groups.name(int(k)): v for k, v in entry["n_per_group"].items()}
        out[s] = {"attribute": groups.attribute, **entry}
    return out


@dataclass
class Evaluation:
    """A model on a split, optionally beside the deployed model it replaces: per-group metrics with CIs,
    the paired change (after - before), fresh-probe leakage at the captured sites, and the use measure."""

    after: Scored  # the model evaluated (patched, retrained, or the deployed model itself)
    frame: MetricFrame
    before: Scored | None = None  # the deployed model on the same split
    before_frame: MetricFrame | None = None
    paired: dict | None = None
    leakage: dict[str, dict] | None = None
    use: dict[str, dict] | None = None  # use.json: {model label: use-measure entry} (`metrics.use`), when asked


def summarise(after: Scored, before: Scored | None = None, *, bootstrap: int = 1000, seed: int = 0,
              level: float = 0.95, leakage: bool = True, probes: Sequence[str] = ALL_PROBES,
              folds: int = 5) -> Evaluation:
    """Frames (bootstrap CIs), the paired comparison when `before` is given, and leakage per site.

    Leakage: with `before`, each site `before` captured is probed before (f_o) and after (`after`'s
    capture of the same site, e.g. f_p); without it, `after`'s sites are probed as they are.
    """
    from applefair.metrics.compare import paired_comparison

    kw = {"bootstrap": bootstrap, "seed": seed, "level": level}
    ev = Evaluation(after=after, frame=after.frame(**kw))
    if before is not None:
        ev.before, ev.before_frame = before, before.frame(**kw)
        ev.paired = paired_comparison(before.per_sample, after.per_sample, after.groups.groups, resamples=bootstrap,
                                      seed=seed, level=level, convention=after.convention)
    if leakage:
        probed = before if before is not None else after
        if probed.latents:
            ev.leakage = probe_leakage(probed, after if before is not None else None, probes=probes, folds=folds,
                                       seed=seed, resamples=bootstrap, level=level)
    return ev


def predict_scores(model: nn.Module, dataset: SegmentationDataset, groups: GroupSpec,
                   batch_size: int = 32, device: str | torch.device | None = None, *,
                   metrics: Sequence[str] = ("dice", "iou"), class_names: Sequence[str] | None = None,
                   nsd_tolerance: float | None = None) -> pd.DataFrame:
    """Per-sample table only: id, group (name or 'unknown'), and one column per metric (default dice, iou)."""
    return score(model, dataset, groups, metrics=metrics, class_names=class_names, nsd_tolerance=nsd_tolerance,
                 batch_size=batch_size, device=device).per_sample
