"""Does the decoder *use* the group information it receives? A counterfactual test, beside the probes.

A probe says the group is *present* in a latent; it does not say the decoder's output depends on it.
The use measure intervenes on what the decoder receives and watches the output:

1. one pass over the split gathers, per group and per decoder input (site), the mean latent map and
   the per-channel spread around it (`statistic="map"`; `"channel"`: per-channel mean and spread only);
2. per batch, a clean pass keeps each site's output; a counterfactual pass then *replaces* every site's
   output (forward hooks) by the sample's own latent moved to another group's statistics,
   f' = mu_b + (f - mu_a) * sd_b / sd_a, with every site fed from the clean pass, so each decoder input is
   moved exactly once (a shallow site's change does not leak into a deeper site's input);
3. per sample: the output change, 1 - Dice(counterfactual mask, original mask), and the change of Dice
   against the ground truth; per source group their means with stratified bootstrap CIs; the headline
   is the mean of the group means;
4. the same with the group labels permuted (`permutations` times, group sizes kept): the translation
   then carries only the sampling noise of the group statistics, which is what `none` would give. The
   measure reads "used" when the lower CI bound of the output change lies above every permuted value.

A misused cue reads high on the output change, and moving the disadvantaged group to the advantaged
group's statistics raises its Dice; a difficulty-type gap may move the output without raising Dice
(`verdict`: `used_gain`, `used_no_gain`, `not_used`; validated in bench/use_measure.py).
For a patched model the hooks run *before* the perturbers (they translate f_o, and the perturber acts on
the moved latent): the same intervention on the same variable as for the deployed model, asking whether
the patched decoder, perturber included, still conditions its output on the group (docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from applefair.data.groups import GroupSpec
from applefair.engine.device import module_device, to_device
from applefair.metrics.bootstrap import draw_indices, percentile_ci, strata_of
from applefair.metrics.conventions import Convention, get_convention
from applefair.metrics.segmentation import per_sample_metrics
from applefair.models.forward import segment
from applefair.models.sliding import windows_per_sample

STATISTICS = ("map", "channel")
VERDICTS = ("used_gain", "used_no_gain", "not_used")
PERMUTATIONS = 10
INTERVENTION = "f_o: each decoder input's own output, moved before any perturber acts on it"


def _channels_first(f: torch.Tensor) -> torch.Tensor:
    """Maps (B, C, ...) as they are, tokens (B, N, C) as (B, C, N), vectors (B, C) as (B, C, 1)."""
    if f.ndim == 2:
        return f[..., None]
    return f.transpose(1, 2) if f.ndim == 3 else f


def _restore(f: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.ndim == 2:
        return f[..., 0]
    return f.transpose(1, 2) if like.ndim == 3 else f


def masks_of(probs: torch.Tensor) -> torch.Tensor:
    """Predicted masks: threshold 0.5 for one channel (sigmoid head), argmax for several (softmax head)."""
    return (probs[:, 0] > 0.5).long() if probs.shape[1] == 1 else probs.argmax(1)


def mask_agreement(a: torch.Tensor, b: torch.Tensor, classes: int = 2) -> np.ndarray:
    """Per-sample Dice between two predicted masks (label maps), mean over the foreground classes either
    holds; 1 when both are empty (nothing changed)."""
    scores = []
    for c in range(1, classes):
        pa, pb = (a == c).flatten(1), (b == c).flatten(1)
        total = (pa.sum(1) + pb.sum(1)).double()
        inter = (pa & pb).sum(1).double()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, math.nan)))
    both = torch.stack(scores, 1).numpy()
    held = ~np.isnan(both)
    return np.where(held.any(1), np.nansum(both, 1) / np.maximum(held.sum(1), 1), 1.0)


class _NotOneInput(ValueError):
    """A site that does not give one output per sample per forward pass (sliding windows, a shared module)."""


class _Hooks:
    """Forward hooks (prepended, so they run before any perturber's) on the decoder inputs: they keep each
    site's clean output, or replace it by a translated copy of the clean one. While replacing, a site's own
    computation is skipped (its output is discarded anyway): a counterfactual pass of a SAM-like model then
    costs its mask decoder, not its image encoder."""

    def __init__(self, sites: Mapping[str, nn.Module]):
        self.sites = dict(sites)
        self.mode, self.clean, self.replace = "keep", {}, {}
        self.calls: dict[str, int] = {}
        self.handles = [m.register_forward_hook(self._hook(s), prepend=True) for s, m in self.sites.items()]

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise TypeError(f"site '{site}' outputs {type(output).__name__}, expected a tensor")
            self.calls[site] = self.calls.get(site, 0) + 1
            if self.mode == "keep":
                self.clean[site] = output.detach()
                return None
            return self.replace.get(site, self.clean[site])
        return hook

    def forward(self, model: nn.Module, batch: dict, mode: str, replace: Mapping | None = None) -> torch.Tensor:
        self.mode, self.replace, self.calls = mode, dict(replace or {}), {}
        if mode == "keep":
            out = segment(model, batch)
            again = [s for s, n in self.calls.items() if n > 1]
            if again or windows_per_sample(model) > 1:
                raise _NotOneInput(f"site(s) {', '.join(again) or ', '.join(self.sites)} run more than once per "
                                   "forward pass (sliding windows, or a shared module): not one decoder input per "
                                   "sample to intervene on")
            return out
        saved = {s: m.__dict__.get("forward") for s, m in self.sites.items()}
        for s, m in self.sites.items():
            m.forward = lambda *_a, _out=self.clean[s], **_k: _out  # the hook replaces it: no need to compute it
        try:
            return segment(model, batch)
        finally:
            for s, m in self.sites.items():
                if saved[s] is None:
                    del m.forward
                else:
                    m.forward = saved[s]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextmanager
def _evaluating(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _labelings(gids: np.ndarray, permutations: int, seed: int) -> np.ndarray:
    """(1 + P, N) group labels: the real ones, then P permutations of the known labels (group sizes kept);
    unknown samples (-1) stay unknown."""
    rng = np.random.default_rng(seed)
    known = np.flatnonzero(gids >= 0)
    rows = [gids.copy()]
    for _ in range(permutations):
        perm = gids.copy()
        perm[known] = gids[rng.permutation(known)]
        rows.append(perm)
    return np.stack(rows)


class _Stats:
    """Per labeling, group and site: sums of f and f^2 (channels first), from which the means and spreads."""

    def __init__(self, labels: np.ndarray, groups: Sequence[int]):
        self.labels, self.groups = labels, list(groups)
        self.sums: dict[str, torch.Tensor] = {}
        self.sq: dict[str, torch.Tensor] = {}
        self.shape: dict[str, tuple[int, ...]] = {}
        self.count = np.stack([(labels == g).sum(1) for g in self.groups], 1)  # (L, K)

    def add(self, site: str, f: torch.Tensor, index: np.ndarray) -> None:
        x = _channels_first(f).double()
        lab = torch.as_tensor(self.labels[:, index], device=x.device)  # (L, B)
        onehot = torch.stack([(lab == g) for g in self.groups], 1).double()  # (L, K, B)
        flat = x.flatten(1)
        s, q = onehot @ flat, onehot @ (flat * flat)  # (L, K, C*S)
        if site in self.sums:
            self.sums[site] += s
            self.sq[site] += q
        else:
            self.sums[site], self.sq[site], self.shape[site] = s, q, tuple(x.shape[1:])

    def moments(self, site: str, statistic: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, spread) per labeling and group: mean (L, K, C, *S) or (L, K, C, 1...), spread (L, K, C, 1...)."""
        shape = self.shape[site]
        n = torch.as_tensor(self.count, device=self.sums[site].device, dtype=torch.float64).clamp_min(1)[..., None]
        mean = (self.sums[site] / n).reshape(*n.shape[:2], *shape)
        msq = (self.sq[site] / n).reshape(*n.shape[:2], *shape)
        axes = tuple(range(3, mean.ndim))
        if statistic == "channel":
            mean = mean.mean(axes, keepdim=True)
            var = msq.mean(axes, keepdim=True) - mean ** 2
        else:
            var = (msq - mean ** 2).mean(axes, keepdim=True)
        return mean, var.clamp_min(0).sqrt()


def _translate(f: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor, src: np.ndarray, dst: np.ndarray
               ) -> torch.Tensor:
    """f moved from group src[i] to dst[i] per sample (index -1: left as it is)."""
    x = _channels_first(f)
    move = torch.as_tensor((src >= 0) & (dst >= 0), device=x.device)
    s, d = torch.as_tensor(np.maximum(src, 0), device=x.device), torch.as_tensor(np.maximum(dst, 0), device=x.device)
    sd_s, sd_d = spread[s], spread[d]
    ratio = torch.where(sd_s > 1e-8 * (1 + sd_d), sd_d / sd_s.clamp_min(1e-30), torch.ones_like(sd_s))
    moved = (mean[d] + (x.double() - mean[s]) * ratio).to(x.dtype)
    keep = move.reshape(-1, *([1] * (x.ndim - 1)))
    return _restore(torch.where(keep, moved, x), f)


def _summary(change: np.ndarray, dgain: np.ndarray, dice: np.ndarray, g: np.ndarray, names: Sequence[str],
             resamples: int, seed: int, level: float) -> dict:
    """Per source group and overall (mean of group means): output change and Dice change, with CIs."""
    present = [k for k in np.unique(g)]
    idx = draw_indices(strata_of(g), resamples, seed) if resamples > 0 else None
    out: dict = {"groups": {}}
    boot = []
    for k in present:
        rows = np.flatnonzero(g == k)
        entry = {"n": int(rows.size), "output_change": float(change[rows].mean()), "dice": float(dice[rows].mean()),
                 "dice_counterfactual": float((dice + dgain)[rows].mean()), "dice_change": float(dgain[rows].mean())}
        if idx is not None:
            cols = np.flatnonzero(g[idx[0]] == k)  # stratified: these columns always hold group k
            bc, bd = change[idx[:, cols]].mean(1), dgain[idx[:, cols]].mean(1)
            entry["output_change_ci"] = list(percentile_ci(bc, level))
            entry["dice_change_ci"] = list(percentile_ci(bd, level))
            boot.append(bc)
        out["groups"][names[k]] = entry
    out["output_change"] = float(np.mean([v["output_change"] for v in out["groups"].values()]))
    if boot:
        out["output_change_ci"] = list(percentile_ci(np.mean(boot, 0), level))
    return out


def use_measure(model: nn.Module, dataset: Dataset, groups: GroupSpec, sites: Mapping[str, nn.Module], *,
                statistic: str = "map", per_site: bool = False, permutations: int = PERMUTATIONS,
                resamples: int = 1000, seed: int = 0, level: float = 0.95, batch_size: int = 32,
                device: str | torch.device | None = None, convention: str | Convention | None = None,
                roles: Mapping[str, str] | None = None) -> dict:
    """The use.json entry of one model: does its output depend on the group statistics of its decoder inputs?

    `sites`: {name: module} of every decoder input, translated together; `per_site` adds each one alone
    (the others fed their clean outputs). Keys: `output_change` (mean over groups of the mean 1 - Dice
    between counterfactual and original masks) with `_ci`; `null_output_change` (mean over `permutations`
    relabelings), `null_output_change_max`, `p_value`, `used`; `groups.<name>`: `n`, `output_change`,
    `dice`, `dice_counterfactual`, `dice_change` with CIs; `worst_group` (lowest Dice) and its Dice change,
    `worst_group_gains` (its CI above zero), and `verdict`: `used_gain` (used, and the worst-off group's Dice
    rises with the other groups' statistics: a cue the decoder misuses), `used_no_gain`, or `not_used`.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic '{statistic}' is not known (expected one of: {', '.join(STATISTICS)})")
    if not sites:
        raise ValueError("the use measure needs at least one decoder input (site)")
    conv = get_convention(convention)
    device = module_device(model) if device is None else torch.device(device)
    gids = np.asarray(_group_ids(dataset), dtype=np.int64)
    present, counts = np.unique(gids[gids >= 0], return_counts=True)
    usable = [int(k) for k, c in zip(present, counts, strict=True) if c >= 2]
    gids = np.where(np.isin(gids, usable), gids, -1)
    names = list(sites)
    base = {"attribute": groups.attribute, "statistic": statistic, "intervention": INTERVENTION,
            "sites": {s: (roles or {}).get(s, "") for s in names}, "permutations": permutations,
            "resamples": resamples, "level": level}
    if len(usable) < 2:
        return {**base, "n": int((gids >= 0).sum()), "output_change": math.nan, "used": None,
                "note": "fewer than two groups with two or more samples"}
    labels = _labelings(gids, permutations, seed)
    stats = _Stats(labels, usable)
    hooks = _Hooks(sites)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    configs = [("all", names)] + ([(s, [s]) for s in names] if per_site else [])
    change = {c: np.zeros((len(labels), len(gids))) for c, _ in configs}
    dgain = {c: np.zeros((len(labels), len(gids))) for c, _ in configs}
    dice = np.zeros(len(gids))
    classes = 2
    try:
        with torch.no_grad(), _evaluating(model):
            try:
                first = next(iter(loader))
                hooks.forward(model, to_device(first, device), "keep")
            except _NotOneInput as exc:
                return {**base, "n": int((gids >= 0).sum()), "output_change": math.nan, "used": None,
                        "verdict": None, "note": str(exc)}
            for batch in loader:  # pass 1: the groups' statistics (and their permuted versions)
                batch = to_device(batch, device)
                hooks.forward(model, batch, "keep")
                for s in names:
                    stats.add(s, hooks.clean[s], batch["index"].cpu().numpy())
            moments = {s: stats.moments(s, statistic) for s in names}
            k = len(usable)
            for batch in loader:  # pass 2: clean and counterfactual predictions
                batch = to_device(batch, device)
                index = batch["index"].cpu().numpy()
                probs = _probs(hooks.forward(model, batch, "keep"))
                classes = max(2, probs.shape[1])
                clean_mask, mask = masks_of(probs), batch["mask"].cpu()
                dice[index] = per_sample_metrics(probs, mask, metrics=("dice",), convention=conv)["dice"]
                for li, lab in enumerate(labels):
                    pos = np.searchsorted(usable, np.maximum(lab[index], 0))
                    src = np.where(lab[index] >= 0, pos, -1)
                    for shift in range(1, k):
                        dst = np.where(src >= 0, (src + shift) % k, -1)
                        for name, moved in configs:
                            rep = {s: _translate(hooks.clean[s], moments[s][0][li], moments[s][1][li], src, dst)
                                   for s in moved}
                            cf = _probs(hooks.forward(model, batch, "replace", rep))
                            change[name][li, index] += (1 - mask_agreement(masks_of(cf), clean_mask, classes)) / (k - 1)
                            new = per_sample_metrics(cf, mask, metrics=("dice",), convention=conv)["dice"]
                            dgain[name][li, index] += (np.asarray(new) - dice[index]) / (k - 1)
    finally:
        hooks.remove()
    return {**base, **_report(configs, change, dgain, dice, labels, usable, groups, resamples, seed, level)}


def _group_ids(dataset: Dataset) -> list[int]:
    """The group id of every sample, in dataset order (-1 unknown)."""
    ids = getattr(dataset, "group_ids", None)
    if ids is not None:
        return [int(g) for g in ids]
    return [int(dataset[i]["group"]) for i in range(len(dataset))]


def _probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float().cpu()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def _report(configs, change, dgain, dice, labels, usable, groups, resamples, seed, level) -> dict:
    known = labels[0] >= 0
    g = np.searchsorted(usable, labels[0][known])
    names = [groups.name(int(u)) for u in usable]
    out: dict = {"n": int(known.sum()), "n_per_group": {names[i]: int((g == i).sum()) for i in range(len(usable))}}
    per_site = {}
    for name, _ in configs:
        res = _summary(change[name][0][known], dgain[name][0][known], dice[known], g, names, resamples, seed, level)
        null = [float(np.mean([change[name][li][known][labels[li][known] == u].mean() for u in usable]))
                for li in range(1, len(labels))]
        res["null_output_change"] = float(np.mean(null)) if null else math.nan
        res["null_output_change_max"] = float(np.max(null)) if null else math.nan
        res["p_value"] = float((1 + sum(v >= res["output_change"] for v in null)) / (1 + len(null)))
        lo = (res.get("output_change_ci") or [res["output_change"]])[0]
        res["used"] = bool(lo > res["null_output_change_max"]) if null else None  # no null level: no verdict
        if name == "all":
            worst = min(res["groups"], key=lambda n: res["groups"][n]["dice"])
            res["worst_group"] = worst
            res["worst_group_dice_change"] = res["groups"][worst]["dice_change"]
            res["worst_group_dice_change_ci"] = res["groups"][worst].get("dice_change_ci", [math.nan, math.nan])
            low = res["worst_group_dice_change_ci"][0]
            res["worst_group_gains"] = bool(math.isfinite(low) and low > 0)
            res["verdict"] = (None if res["used"] is None else "not_used" if not res["used"] else
                              "used_gain" if res["worst_group_gains"] else "used_no_gain")
            out.update(res)
        else:
            per_site[name] = {k: v for k, v in res.items() if k != "groups"}
    if per_site:
        out["per_site"] = per_site
    return out
