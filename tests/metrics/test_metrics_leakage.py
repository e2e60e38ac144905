"""Leakage probes: the vectorised bootstrap AUC agrees with scikit-learn; probes find real signal and no more."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from applefair.metrics.bootstrap import draw_indices, strata_of
from applefair.metrics.leakage import auc_bootstrap, pool_latent, probe_report, site_leakage


@pytest.mark.parametrize("k", [2, 3])
def test_bootstrap_auc_matches_sklearn_per_resample(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 80)
    proba = rng.dirichlet(np.ones(k), 80)
    proba[np.arange(80), y] += 0.3 * rng.random(80)
    proba /= proba.sum(1, keepdims=True)
    aucs = auc_bootstrap(y, proba, resamples=5, seed=4)
    idx = draw_indices(strata_of(y), 5, 4)
    for r in range(5):
        yy, pp = y[idx[r]], proba[idx[r]]
        ref = roc_auc_score(yy, pp[:, 1]) if k == 2 else roc_auc_score(yy, pp, multi_class="ovr", average="macro")
        assert aucs[r] == pytest.approx(ref)


def test_probes_read_a_real_signal_and_not_noise():
    rng = np.random.default_rng(0)
    n = 90
    groups = np.array([0] * 40 + [1] * 30 + [2] * 20)
    noise = rng.normal(size=(n, 12))
    signal = noise.copy()
    signal[:, 0] += 3.0 * groups  # the group is linearly readable from one feature
    strong = probe_report(signal, groups, resamples=200)
    null = probe_report(noise, groups, resamples=200)
    for kind in ("logistic", "mlp"):
        assert strong[kind]["auc"] > 0.85
        assert null[kind]["auc_ci"][0] <= 0.5 + 0.05 and null[kind]["auc"] < 0.7
        lo, hi = strong[kind]["auc_ci"]
        assert lo <= strong[kind]["auc"] <= hi


def test_site_leakage_keys_and_unknown_groups():
    rng = np.random.default_rng(1)
    groups = np.array([0, 1] * 20 + [-1] * 5)
    before = rng.normal(size=(45, 6))
    before[:, 0] += 2.0 * (groups == 1)
    after = rng.normal(size=(45, 6))
    out = site_leakage(before, after, groups, resamples=100)
    assert out["n"] == 40 and out["n_per_group"] == {0: 20, 1: 20} and out["patched"]
    assert out["auc_before"] > out["auc_after"]
    assert out["auc"] == out["auc_after"] and out["mlp_auc"] == out["mlp_auc_after"]
    assert {"auc_before_ci", "auc_after_ci", "mlp_auc_before", "mlp_auc_before_ci"} <= set(out)
    unpatched = site_leakage(before, None, groups, probes=("logistic",), resamples=0)
    assert "auc_after" not in unpatched and unpatched["auc"] == unpatched["auc_before"]
    assert np.isnan(site_leakage(before, None, np.zeros(45, int), resamples=0)["auc"])


def test_pool_latent_shapes():
    assert pool_latent(torch.randn(4, 8, 5, 3)).shape == (4, 16)
    assert pool_latent(torch.randn(4, 10, 8)).shape == (4, 16)  # tokens (B, N, C)
    assert pool_latent(torch.randn(4, 8)).shape == (4, 8)


def test_pool_mean_and_std():
    f = torch.arange(8.0).reshape(1, 2, 2, 2)
    p = pool_latent(f)
    assert torch.allclose(p, torch.tensor([[1.5, 5.5, f[0, 0].std(unbiased=False), f[0, 1].std(unbiased=False)]]))
    assert torch.allclose(pool_latent(f.flatten(2).transpose(1, 2)), p)  # tokens give the same statistics


def test_pool_keeps_a_fixed_width_for_the_discriminator():
    """A (B, C) latent has no positions: as is for the probes, with a zero std for D_p's fixed input width."""
    f = torch.randn(3, 4)
    assert torch.equal(pool_latent(f), f)
    assert torch.equal(pool_latent(f, fixed_width=True), torch.cat([f, torch.zeros_like(f)], 1))
    assert torch.equal(pool_latent(f, "mean", fixed_width=True), f)
    assert pool_latent(torch.randn(3, 4, 5, 5), "mean").shape == (3, 4)
