"""The spatial probe reads cues the pooled probes cannot; maps are captured small, in float16, on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from applefair.data.groups import GroupSpec
from applefair.metrics.evaluate import probe_leakage, score
from applefair.metrics.leakage import ALL_PROBES, folds_of, pool_latent, probe_report, site_leakage
from applefair.metrics.spatial import spatial_maps


def _patch_latents(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group 1 has a bright 2x2 patch at a fixed position, group 0 the same patch elsewhere: every per-channel
    mean and std has the same distribution in both groups, only *where* differs."""
    rng = np.random.default_rng(seed)
    groups = np.array([0] * (2 * n // 3) + [1] * (n - 2 * n // 3))
    x = rng.normal(size=(n, 4, 8, 8)).astype(np.float32)
    for i, g in enumerate(groups):
        r, c = 3, 3
        while g == 0 and abs(r - 3) <= 1 and abs(c - 3) <= 1:
            r, c = rng.integers(0, 7, 2)
        x[i, 0, r:r + 2, c:c + 2] += 3.0
    return x, groups


def test_spatial_probe_finds_a_cue_that_pooled_probes_miss():
    x, groups = _patch_latents()
    pooled = pool_latent(torch.from_numpy(x)).numpy()
    rep = probe_report(pooled, groups, probes=ALL_PROBES, maps=spatial_maps(torch.from_numpy(x)).numpy(),
                       resamples=200)
    assert rep["spatial"]["auc"] > 0.85 and rep["spatial"]["auc_ci"][0] > 0.7
    assert rep["logistic"]["auc"] < 0.7 and rep["mlp"]["auc"] < 0.7


def test_spatial_probe_reads_noise_as_noise():
    rng = np.random.default_rng(3)
    groups = np.array([0] * 60 + [1] * 30)
    maps = rng.normal(size=(90, 8, 8, 8)).astype(np.float16)
    rep = probe_report(None, groups, probes=("spatial",), maps=maps, resamples=200, folds=3)
    assert rep["spatial"]["auc"] < 0.7 and rep["spatial"]["auc_ci"][0] < 0.5


def test_spatial_probe_is_seeded():
    x, groups = _patch_latents(60, seed=1)
    a = probe_report(None, groups, probes=("spatial",), maps=x, resamples=0, seed=4, folds=3)
    b = probe_report(None, groups, probes=("spatial",), maps=x, resamples=0, seed=4, folds=3)
    assert a["spatial"]["auc"] == b["spatial"]["auc"]


@pytest.mark.parametrize(("shape", "expected"), [
    ((2, 8, 64, 48), (2, 8, 16, 16)),  # maps pooled to at most 16 x 16
    ((2, 8, 10, 12), (2, 8, 10, 12)),  # small maps kept as they are
    ((2, 64, 8), (2, 8, 8, 8)),  # tokens (B, N, C) on their square grid
    ((2, 65, 8), (2, 8, 8, 8)),  # ... a leading class token dropped
    ((2, 12, 8), (2, 8, 12, 1)),  # ... a line when N is no square
    ((2, 8), (2, 8, 1, 1)),  # a vector: a 1 x 1 map
    ((2, 4, 20, 20, 20), (2, 4, 8, 8, 8)),  # volumes: at most 8 per axis
])
def test_spatial_maps_shapes_and_precision(shape, expected):
    out = spatial_maps(torch.randn(*shape))
    assert tuple(out.shape) == expected and out.dtype == torch.float16


def test_spatial_maps_average_and_do_not_overflow():
    f = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(spatial_maps(f, max_size=2).float(), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    big = spatial_maps(torch.full((1, 2, 4, 4), 1e6))
    assert big.dtype == torch.float32 and torch.isfinite(big).all()  # beyond float16: kept in float32


def test_site_leakage_probes_maps_before_and_after():
    x, groups = _patch_latents(90, seed=2)
    pooled = pool_latent(torch.from_numpy(x)).numpy()
    flat = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    out = site_leakage(pooled, pool_latent(torch.from_numpy(flat)).numpy(), groups, maps_before=x, maps_after=flat,
                       role="perturbed", probes=ALL_PROBES, resamples=100, folds=3)
    assert out["role"] == "perturbed" and out["map_shape"] == [4, 8, 8]
    assert out["spatial_auc_before"] > 0.8 > out["spatial_auc_after"]
    assert out["spatial_auc"] == out["spatial_auc_after"] and len(out["spatial_auc_before_ci"]) == 2


def test_probes_share_their_folds():
    groups = np.array([0, 1, -1] * 10 + [2])
    rows, y, splits = folds_of(groups, folds=5, seed=0)
    assert len(rows) == 20 and set(y) == {0, 1}  # unknown and single-sample groups left out
    assert sorted(np.concatenate([te for _, te in splits]).tolist()) == list(range(20))
    assert folds_of(np.zeros(10, int)) is None


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 3, 3, padding=1)
        self.dec = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.dec(self.enc(x))


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 40, 40, generator=g)
        self.groups = [i % 2 for i in range(n)]
        self.ids = [str(i) for i in range(n)]

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": (self.images[i] > 0.5).float(), "group": self.groups[i], "index": i}


def test_score_keeps_maps_only_when_asked():
    torch.manual_seed(0)
    model, spec = _Tiny(), GroupSpec("g", ["A", "B"])
    plain = score(model, _Data(), spec, capture={"enc": model.enc})
    kept = score(model, _Data(), spec, capture={"enc": model.enc}, keep_maps=True)
    assert plain.maps is None
    assert kept.maps["enc"].shape == (24, 3, 16, 16) and kept.maps["enc"].dtype == np.float16
    assert kept.per_sample.equals(plain.per_sample) and np.array_equal(kept.latents["enc"], plain.latents["enc"])
    kept.roles = {"enc": "bottleneck"}
    leak = probe_leakage(kept, resamples=0, folds=3)
    assert leak["enc"]["role"] == "bottleneck" and "spatial_auc_before" in leak["enc"]
    assert "spatial_auc_before" not in probe_leakage(plain, resamples=0, folds=3)["enc"]  # no maps, no probe
