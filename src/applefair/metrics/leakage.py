"""Attribute leakage: can a *fresh* probe read the group from what the decoder receives?

The probe is never the discriminator used in training: three new probes of fixed budget — a logistic
regression and a small MLP (scikit-learn) on globally pooled latents (per-channel mean and std), and a
small conv net on the latent maps (`metrics.spatial`), which sees cues that live in *where* something
is — scored by ROC AUC of their cross-validated (out-of-fold) predictions on the test split, over the
same stratified folds; one-vs-rest macro AUC for more than two groups. 0.5 means the group cannot be
read; 1.0 means it can be read perfectly.

The CI is a bootstrap over test samples (stratified by group) of the out-of-fold predictions: it
covers which test images were drawn, not the randomness of refitting the probe.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from applefair.metrics.bootstrap import draw_indices, percentile_ci, strata_of
from applefair.metrics.spatial import out_of_fold_maps

PROBES = ("logistic", "mlp")  # the pooled probes (scikit-learn)
ALL_PROBES = (*PROBES, "spatial")  # "spatial" reads maps (`metrics.spatial`)
ROLES = ("perturbed", "skip", "bottleneck")  # what a decoder input is (leakage.json `role`)
POOLS = ("mean", "meanstd")


def pool_latent(f: torch.Tensor, how: str = "meanstd", fixed_width: bool = False) -> torch.Tensor:
    """Per-channel statistics of a latent: (B, C, ...) maps or (B, N, C) tokens -> (B, 2C) mean and std
    (`how="mean"`: (B, C) means only).

    A (B, C) latent has no positions: it is returned as is, or with a zero std appended when
    `fixed_width` (the discriminator's input width must not depend on the latent's rank). The one
    pooling of the package: fresh probes, the discriminator D_p and the group-mean term all read it.
    """
    if how not in POOLS:
        raise ValueError(f"pooling '{how}' is not known (expected one of: {', '.join(POOLS)})")
    if f.ndim == 2:
        return f if how == "mean" or not fixed_width else torch.cat([f, torch.zeros_like(f)], 1)
    flat = f.flatten(2) if f.ndim >= 4 else f.transpose(1, 2)  # tokens (B, N, C) -> (B, C, N)
    mu = flat.mean(-1)
    if how == "mean":
        return mu
    return torch.cat([mu, flat.std(-1, unbiased=False)], dim=1)


def make_probe(kind: str, seed: int = 0):
    """A fresh, standardised probe: 'logistic' or 'mlp' (one hidden layer of 32 units, L-BFGS, L2 0.1:
    test splits are small, so an unregularised or Adam-trained MLP overfits and under-reads leakage)."""
    if kind == "spatial":
        raise ValueError("the spatial probe reads maps: use out_of_fold(maps, groups, 'spatial')")
    if kind == "logistic":
        clf = LogisticRegression(max_iter=2000, C=1.0)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", alpha=0.1, max_iter=200, random_state=seed)
    else:
        raise ValueError(f"probe '{kind}' is not known (expected one of {PROBES})")
    return make_pipeline(StandardScaler(), clf)


def folds_of(groups: np.ndarray, folds: int = 5, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]] | None:
    """The probes' shared cross-validation: (kept rows, their labels 0..K-1, stratified folds), or None when
    fewer than two groups have at least two samples. Unknown groups and groups of one sample are left out."""
    g = np.asarray(groups)
    classes, counts = np.unique(g[g >= 0], return_counts=True)
    keep = np.isin(g, classes[counts >= 2])
    y = g[keep]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return None
    y = np.searchsorted(classes, y)  # ids 0..K-1 of the groups present
    cv = StratifiedKFold(n_splits=int(min(folds, counts.min())), shuffle=True, random_state=seed)
    return np.flatnonzero(keep), y, list(cv.split(np.zeros(len(y)), y))


def out_of_fold(features: np.ndarray, groups: np.ndarray, kind: str = "logistic", folds: int = 5,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Cross-validated class probabilities of the known-group samples: (labels, proba), or None when
    fewer than two groups have at least two samples. Groups with a single sample are left out.
    `kind="spatial"` takes maps (N, C, h, w) as `features`; the others a (N, F) table."""
    split = folds_of(groups, folds, seed)
    if split is None:
        return None
    rows, y, splits = split
    k = int(y.max()) + 1
    if kind == "spatial":
        return y, out_of_fold_maps(np.asarray(features)[rows], y, splits, k, seed)
    x = np.asarray(features, dtype=np.float64)[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        proba = cross_val_predict(make_probe(kind, seed), x, y, cv=splits, method="predict_proba")
    return y, proba


def auc_score(y: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC (binary) or one-vs-rest macro AUC (more than two classes), via scikit-learn."""
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def auc_bootstrap(y: np.ndarray, proba: np.ndarray, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """AUC of `resamples` class-stratified resamples, vectorised through the rank (Mann-Whitney) form."""
    idx = draw_indices(strata_of(y), resamples, seed)  # (R, N); column j always holds class y[idx[0, j]]
    labels = y[idx[0]]
    classes = [1] if proba.shape[1] == 2 else list(range(proba.shape[1]))
    aucs = []
    for c in classes:
        pos = labels == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        ranks = rankdata(proba[idx, c], axis=1)
        aucs.append((ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return np.mean(aucs, axis=0)


def probe_auc(features: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0,
              kind: str = "logistic") -> float:
    """Cross-validated AUC of a fresh probe (NaN when a probe cannot be fitted)."""
    res = out_of_fold(features, groups, kind, folds, seed)
    return math.nan if res is None else auc_score(*res)


def probe_report(features: np.ndarray, groups: np.ndarray, probes: Sequence[str] = PROBES, folds: int = 5,
                 seed: int = 0, resamples: int = 1000, level: float = 0.95,
                 maps: np.ndarray | None = None) -> dict[str, dict]:
    """{probe: {'auc', 'auc_ci'}} for each probe kind; 'spatial' reads `maps` (skipped when there are none)."""
    out = {}
    for kind in probes:
        if kind == "spatial" and maps is None:
            continue
        res = out_of_fold(maps if kind == "spatial" else features, groups, kind, folds, seed)
        if res is None:
            out[kind] = {"auc": math.nan, "auc_ci": [math.nan, math.nan]}
            continue
        ci = percentile_ci(auc_bootstrap(*res, resamples, seed), level) if resamples > 0 else (math.nan,) * 2
        out[kind] = {"auc": auc_score(*res), "auc_ci": list(ci)}
    return out


def site_leakage(before: np.ndarray, after: np.ndarray | None, groups: np.ndarray, *,
                 maps_before: np.ndarray | None = None, maps_after: np.ndarray | None = None,
                 role: str | None = None, **kw) -> dict:
    """Leakage at one decoder input: f_o (`before`) and, for a patched model, f_p (`after`); pooled statistics
    for the logistic and MLP probes, maps (`maps_before`/`maps_after`) for the spatial probe.

    Keys: ``auc_before``/``auc_after`` (logistic probe), ``auc_before_ci``..., ``mlp_auc_before``...,
    ``spatial_auc_before``..., and ``auc`` / ``mlp_auc`` / ``spatial_auc`` for what the decoder actually
    receives (f_p if patched, else f_o); ``role`` (perturbed, skip, bottleneck) when given.
    """
    g = np.asarray(groups)
    known = g[g >= 0]
    ids, counts = np.unique(known, return_counts=True)
    out: dict = {"n": int(known.size), "n_per_group": {int(k): int(v) for k, v in zip(ids, counts, strict=True)},
                 "patched": after is not None, "features": int(before.shape[1])}
    if role is not None:
        out = {"role": role, **out}
    if maps_before is not None:
        out["map_shape"] = [int(s) for s in np.shape(maps_before)[1:]]
    for when, feats, maps in (("before", before, maps_before), ("after", after, maps_after)):
        if feats is None:
            continue
        for kind, res in probe_report(feats, g, maps=maps, **kw).items():
            pre = "" if kind == "logistic" else f"{kind}_"
            out[f"{pre}auc_{when}"] = res["auc"]
            out[f"{pre}auc_{when}_ci"] = res["auc_ci"]
    seen = "after" if after is not None else "before"
    for pre in [""] + [f"{k}_" for k in ALL_PROBES if k != "logistic"]:
        if f"{pre}auc_{seen}" in out:
            out[f"{pre}auc"] = out[f"{pre}auc_{seen}"]
            out[f"{pre}auc_ci"] = out[f"{pre}auc_{seen}_ci"]
    return out
