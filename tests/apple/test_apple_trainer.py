"""The APPLE trainer: frozen segmentor, cached == uncached, many groups, unknowns, stopping."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from applefair.apple import AppleConfig, train_apple
from applefair.engine.config import validate_settings
from applefair.engine.io import state_dict_hash
from applefair.errors import InputError

# one game unless a test is of restarts
FAST = {"perturber": "conv", "width": 8, "d_hidden": 16, "batch_size": 8, "restarts": 1}


def test_cached_and_uncached_training_agree_and_the_segmentor_stays_frozen(apple_setup):
    net, spec, groups, split = apple_setup
    before = state_dict_hash(net)
    results = {}
    x = torch.stack([split["val"][i]["image"] for i in range(6)])
    for cache in ("auto", "off"):
        cfg = AppleConfig(epochs=2, cache=cache, **FAST)
        res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
        patched, history = res.patched, res.history
        assert state_dict_hash(net) == before
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        assert (len(res.cache) > 0) == (cache == "auto")
        with torch.no_grad():
            logits = patched(x)
            perturbation = patched.latents[spec.site][1] - patched.latents[spec.site][0]
        results[cache] = (logits, perturbation, history)
        patched.remove()
    (la, pa, ha), (lb, pb, hb) = results["auto"], results["off"]
    assert "model.0" in check_names(net, spec)  # the first down block is cached
    # the same result up to float rounding: the cache ran the encoder in other batch compositions, and CPU
    # kernels round differently per batch size (1e-7), which Adam can carry into near-zero gradient entries
    assert torch.allclose(la, lb, atol=1e-3)
    assert torch.allclose(pa, pb, atol=1e-3, rtol=1e-2)
    for ra, rb in zip(ha, hb, strict=True):
        for key in ("l_seg", "l_d", "d_acc", "val_dice", "probe_auc"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-3), key
    assert ha[-1]["pert_norm"] > 0  # the perturber moved away from the identity


def check_names(net, spec):
    from applefair.apple.cache import cacheable_modules

    batch = {"image": torch.rand(2, 1, 64, 64)}
    return cacheable_modules(net, [spec.site], batch)


def test_three_groups_unknowns_all_sites_and_every_option(apple_setup, tiny_frame):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset

    net, spec, _, _ = apple_setup
    frame = tiny_frame.copy()
    frame["site"] = [["a", "b", "c", ""][i % 4] for i in range(len(frame))]  # 3 groups + unknown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSpec("site").fit(frame)
    assert groups.num_groups == 3
    split = {s: SegmentationDataset(frame, groups, s) for s in ("train", "val")}
    sites = list(spec.skip_sites) + [spec.site]
    cfg = AppleConfig(epochs=2, objective="grl", beta=0.5, lam=0.1, gamma=0.5, balanced_seg=True, d_spectral_norm=True,
                      d_label_smoothing=0.1, n_d=2, d_warmup=1, sites=sites, global_branch=True,
                      perturber="unet", width=4, res_blocks=1, d_hidden=16, batch_size=8)
    before = state_dict_hash(net)
    res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
    patched, history = res.patched, res.history
    assert state_dict_hash(net) == before and res.sites == sites
    assert history[1]["warmup"] is True and history[2]["warmup"] is False
    for key in ("l_seg", "l_d", "d_acc", "d_entropy", "mean_gap", "probe_auc", "val_dice", "val_es_dice"):
        assert math.isfinite(history[-1][key]), key
    assert 0.0 <= history[-1]["d_entropy"] <= math.log(3) + 1e-6
    patched.remove()


def test_early_stopping_keeps_the_deployed_model_when_nothing_qualifies(apple_setup):
    net, spec, groups, split = apple_setup
    cfg = AppleConfig(epochs=5, patience=1, tolerance=-1.0, d_warmup=1, **FAST)  # no epoch can qualify
    res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
    patched, history = res.patched, res.history
    assert res.stopped_early and res.selected_epoch == 0
    assert [r["epoch"] for r in history] == [0, 1, 2]
    x = torch.stack([split["val"][i]["image"] for i in range(4)])
    with torch.no_grad():
        patched_out = patched(x)
        with patched.disabled():
            plain = patched(x)
    assert torch.equal(patched_out, plain)  # epoch 0 = zero perturbation
    patched.remove()


def test_a_leakage_bound_only_selects_epochs_whose_probe_is_below_it(apple_setup):
    net, spec, groups, split = apple_setup
    free = AppleConfig(epochs=3, tolerance=1.0, d_warmup=0, **FAST)  # every epoch qualifies on Dice
    res = train_apple(net, spec.site, split["train"], split["val"], groups, free, quiet=True)
    res.patched.remove()
    aucs = {r["epoch"]: r["probe_auc"] for r in res.history[1:]}
    assert res.selected_epoch > 0  # else the bound below could not change the choice
    bound = min(aucs.values()) - 1e-9  # below every epoch's probe: none may be selected
    cfg = AppleConfig(epochs=3, tolerance=1.0, d_warmup=0, max_probe_auc=max(bound, 0.5), **FAST)
    res2 = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
    assert [r["probe_auc"] for r in res2.history[1:]] == list(aucs.values())  # the same game, only the choice differs
    assert bound >= 0.5 and res2.selected_epoch == 0, aucs
    res2.patched.remove()


def test_config_errors_name_the_key():
    with pytest.raises(InputError, match="key 'objective'.*'flip'"):
        AppleConfig(objective="flip")
    with pytest.raises(InputError, match="unknown key 'alpah'"):
        validate_settings({"alpah": 1.0}, AppleConfig, "apple.yaml")
    with pytest.raises(InputError, match="epochs"):
        AppleConfig(epochs=0)
    with pytest.raises(InputError, match="key 'max_probe_auc'.*0.3"):
        AppleConfig(max_probe_auc=0.3)


def test_bf16_autocast_runs_the_game_and_fp16_is_refused(apple_setup):
    """bf16 is what 'auto' picks on GPUs; on the CPU it is opt-in, and tested here so CI covers the path."""
    net, spec, groups, split = apple_setup
    before = state_dict_hash(net)
    cfg = AppleConfig(epochs=2, precision="bf16", **FAST)
    res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
    patched, history = res.patched, res.history
    assert state_dict_hash(net) == before
    assert all(math.isfinite(history[-1][k]) for k in ("l_seg", "l_d", "val_dice", "pert_norm"))
    assert history[-1]["pert_norm"] > 0
    assert all(p.dtype == torch.float32 for p in patched.perturbers.parameters())  # weights stay fp32
    patched.remove()
    with pytest.raises(InputError, match="key 'precision'.*'fp16'"):
        AppleConfig(precision="fp16")


def test_with_the_cache_the_encoder_runs_once_whatever_the_epochs(apple_setup):
    """Training and the per-epoch validation both replay the cache: more epochs, no more encoder passes."""
    from applefair.models.sites import find_module

    net, spec, groups, split = apple_setup
    calls = {"n": 0}
    # a convolution *inside* the first down block: hooks on the block itself also fire when it is replayed
    conv = next(m for m in find_module(net, "model.0").modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        counts = {}
        for cache in ("auto", "off"):
            for epochs in (1, 3):
                calls["n"] = 0
                res = train_apple(net, spec.site, split["train"], split["val"], groups,
                                  AppleConfig(epochs=epochs, cache=cache, **FAST), quiet=True)
                res.patched.remove()
                counts[cache, epochs] = calls["n"]
    finally:
        handle.remove()
    assert counts["auto", 3] == counts["auto", 1]
    assert counts["off", 3] > counts["off", 1] > counts["auto", 1] / 2


def test_building_the_cache_does_not_run_the_decoder(apple_setup):
    """Past the last cached module the forward pass stops: only the one tracing pass reaches the decoder."""
    from applefair.apple.cache import LatentCache
    from applefair.models.sites import find_module

    net, spec, groups, split = apple_setup
    head = [m for m in find_module(net, "model.2").modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    calls = {"n": 0}
    handle = head.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        cache = LatentCache.build(net, [spec.site], split["train"], batch_size=4)
    finally:
        handle.remove()
    assert len(split["train"]) > 8 and calls["n"] == 1  # the tracing pass only, not one per batch
    idx = torch.arange(len(split["train"]))
    assert all(cache.lookup(n, idx).shape[0] == len(idx) for n in cache.names)


def test_gamma_pulls_the_groups_pooled_statistics_together(apple_setup):
    """The matching term reaches the perturber: with it, the groups' logged distance ends lower."""
    net, spec, groups, split = apple_setup
    ends = {}
    for gamma in (0.0, 100.0):
        cfg = AppleConfig(epochs=4, objective="none", gamma=gamma, d_warmup=0, selection="last", lr_g=1e-2, **FAST)
        res = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True)
        res.patched.remove()
        ends[gamma] = res.history[-1]["mean_gap"]
    assert ends[100.0] < 0.5 * ends[0.0], ends


def test_restarts_keep_the_best_validated_game_on_one_cache_and_one_set_of_hooks(apple_setup, tmp_path):
    from applefair.apple.cache import LatentCache
    from applefair.apple.trainer import restart_seed

    net, spec, groups, split = apple_setup
    before = state_dict_hash(net)
    # selection "last": every restart moves off the deployed model, so the pick is by validation score alone
    base = {"epochs": 2, "seed": 3, "selection": "last", **FAST}
    builds = []
    original = LatentCache.build.__func__

    def counting(cls, *args, **kwargs):
        builds.append(1)
        return original(cls, *args, **kwargs)

    LatentCache.build = classmethod(counting)
    try:
        res = train_apple(net, spec.site, split["train"], split["val"], groups, AppleConfig(**{**base, "restarts": 3}),
                          quiet=True, run_dir=tmp_path)
    finally:
        LatentCache.build = classmethod(original)
    assert len(builds) == 2  # one training and one validation cache for all three games
    assert [r["seed"] for r in res.restarts] == [3, 1003, 2003]
    scores = [r["val_es_dice"] for r in res.restarts]
    assert res.restart == scores.index(max(scores))
    assert {p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"} == {
        "checkpoint.safetensors", "checkpoint_restart1.safetensors", "checkpoint_restart2.safetensors"}
    x = torch.stack([split["val"][i]["image"] for i in range(6)])
    with torch.no_grad():
        kept = res.patched(x)
    res.patched.remove()  # a second live patch on the site would be refused: only the kept game's hooks remain
    assert state_dict_hash(net) == before
    # the kept game is exactly the plain game from its seed
    alone = train_apple(net, spec.site, split["train"], split["val"], groups,
                        AppleConfig(**{**base, "seed": restart_seed(3, res.restart)}), quiet=True)
    with torch.no_grad():
        assert torch.equal(alone.patched(x), kept)
    assert res.history == alone.history and res.selected_epoch == alone.selected_epoch
    alone.patched.remove()


def test_pick_restart_prefers_a_game_that_left_the_deployed_model():
    from applefair.apple.trainer import AppleResult, pick_restart

    def result(selected: int, scores: list[float]) -> AppleResult:
        return AppleResult(patched=None, history=[{"val_es_dice": s} for s in scores], selected_epoch=selected,
                           sites=[])

    assert pick_restart([result(0, [0.5, 0.4]), result(0, [0.5, 0.6])]) == 0  # nothing qualified anywhere
    assert pick_restart([result(0, [0.5, 0.4]), result(1, [0.5, 0.55]), result(1, [0.5, 0.6])]) == 2
    assert pick_restart([result(1, [0.5, 0.6]), result(1, [0.5, 0.6])]) == 0  # ties keep the first


def test_restarts_resume_from_their_own_checkpoints(apple_setup, tmp_path):
    net, spec, groups, split = apple_setup
    cfg = AppleConfig(**{**FAST, "epochs": 1, "restarts": 2, "selection": "last"})
    first = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True, run_dir=tmp_path)
    x = torch.stack([split["val"][i]["image"] for i in range(4)])
    with torch.no_grad():
        want = first.patched(x)
    first.patched.remove()
    again = train_apple(net, spec.site, split["train"], split["val"], groups, cfg, quiet=True, run_dir=tmp_path,
                        resume=True)
    with torch.no_grad():
        assert torch.equal(again.patched(x), want)
    assert again.restarts == first.restarts
    again.patched.remove()
    with pytest.raises(InputError, match="another APPLE config"):  # each restart's checkpoint knows its config
        train_apple(net, spec.site, split["train"], split["val"], groups, cfg.model_copy(update={"lr_g": 0.5}),
                    quiet=True, run_dir=tmp_path, resume=True)
    assert not getattr(net.get_submodule(spec.site), "_applefair_patched", False)  # the refusal unhooked the site
