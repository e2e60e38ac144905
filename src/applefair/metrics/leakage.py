"""Attribute leakage: can a *fresh* probe read the group from what the decoder receives?

The probe is never the discriminator used in training: a new logistic regression on
globally pooled (mean and std per channel) latents, scored by cross-validated ROC AUC.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def pool_latent(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C): per-channel mean and std."""
    flat = f.flatten(2)
    return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=1)


def probe_auc(features: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated AUC (one-vs-rest macro for >2 groups) of a logistic-regression probe."""
    keep = groups >= 0
    x, y = features[keep], groups[keep]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return float("nan")
    k = int(min(folds, counts.min()))
    if k < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    proba = cross_val_predict(probe, x, y, cv=cv, method="predict_proba")
    if len(classes) == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
