"""SAM's batched mask decoding equals segment_anything's one-image-at-a-time decoder, and explicit
prompts given to forward() reproduce what `segment()` derives from the masks."""

from __future__ import annotations

import pytest
import torch

import applefair
from applefair.apple.patch import PatchedSegmentor, perturbers_for, save_patch
from applefair.errors import InputError
from applefair.models import create_segmentor, derive_prompts, segment

CASES = [("sam", {"prompt": "box", "jitter": 3}), ("sam", {"prompt": "point", "jitter": 2}), ("samed", {})]


def _batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, 64, 64)
    for i in range(n):
        y, x = torch.randint(0, 40, (2,), generator=g).tolist()
        mask[i, :, y:y + 8 + 2 * i, x:x + 20] = 1
    if n > 2:
        mask[1] = 0  # an empty mask: whole-image box, or "no point"
    return {"image": torch.rand(n, 1, 64, 64, generator=g), "mask": mask, "index": torch.arange(10, 10 + n)}


def _net(name: str, kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    net, spec = create_segmentor(name, tiny=True, **kwargs)
    with torch.no_grad():  # decoder weights of a usual scale, so that a wrong token or slice shows
        for p in net.sam.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return net.eval(), spec


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_batched_decoder_equals_the_per_image_loop(name, kwargs, n):
    net, _ = _net(name, kwargs)
    batch = _batch(n)
    net.set_batch(batch)
    try:
        with torch.no_grad():
            batched, looped = net(batch["image"]), net._forward_loop(batch["image"])
    finally:
        net.set_batch(None)
    assert batched.shape == (n, 1, 64, 64)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    assert batched.std() > 1e-2  # not a degenerate output that any decoder would match


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_batched_decoder_gives_the_loops_gradients(name, kwargs):
    """APPLE trains through the frozen decoder: the gradient at the image embedding (the latent site)
    and at the input must not change either (relative difference of float rounding only)."""
    net, _ = _net(name, kwargs)
    batch = _batch(3, seed=1)
    grads = []
    for fn in (net, net._forward_loop):
        x = batch["image"].clone().requires_grad_(True)
        seen = {}

        def keep(_m, _i, out, seen=seen):
            out.retain_grad()
            seen["emb"] = out

        handle = net.sam.image_encoder.register_forward_hook(keep)
        net.set_batch(batch)
        try:
            (fn(x) ** 2).sum().backward()
        finally:
            net.set_batch(None)
            handle.remove()
        grads.append((seen["emb"].grad, x.grad))
    for batched, looped in zip(*grads, strict=True):
        assert looped.norm() > 0
        assert (batched - looped).norm() / looped.norm() < 1e-5


@pytest.mark.parametrize("mode", ["box", "point"])
def test_explicit_prompts_equal_the_derived_ones(mode):
    net, _ = _net("sam", {"prompt": mode, "jitter": 2, "prompt_seed": 5})
    batch = _batch(4, seed=2)
    prompts = derive_prompts(batch["mask"], batch["index"], net.prompt)
    with torch.no_grad():
        derived = segment(net, batch)
        if mode == "box":
            explicit = net(batch["image"], boxes=prompts["boxes"])
        else:
            explicit = net(batch["image"], points=prompts["points"], labels=prompts["labels"])
        fallback = net(batch["image"])
    torch.testing.assert_close(explicit, derived, rtol=0, atol=0)
    assert not torch.allclose(fallback, derived, atol=1e-3)  # the prompt does reach the decoder


def test_explicit_prompts_override_the_batch_and_default_to_the_whole_image():
    net, _ = _net("sam", {"prompt": "box"})
    batch, other = _batch(3, seed=3), _batch(3, seed=4)
    with torch.no_grad():
        want = segment(net, {**batch, "mask": other["mask"]})
        other_boxes = derive_prompts(other["mask"], batch["index"], net.prompt)["boxes"]
        net.set_batch(batch)
        try:
            got = net(batch["image"], boxes=other_boxes)  # explicit beats the batch's masks
        finally:
            net.set_batch(None)
        whole = torch.tensor([[0.0, 0.0, 63.0, 63.0]]).repeat(3, 1)
        bare, boxed = net(batch["image"]), net(batch["image"], boxes=whole)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(bare, boxed, rtol=0, atol=0)  # no prompt at all: the whole-image box


def test_points_without_labels_are_foreground_points():
    net, _ = _net("sam", {"prompt": "point"})
    x = torch.rand(2, 1, 64, 64)
    pts = torch.tensor([[20.0, 30.0], [40.0, 12.0]])
    with torch.no_grad():
        a = net(x, points=pts)
        b = net(x, points=pts[:, None, :], labels=torch.ones(2, 1, dtype=torch.int64))
        c = net(x, points=pts, labels=torch.zeros(2, 1, dtype=torch.int64))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c, atol=1e-4)


def test_attached_patch_reproduces_the_prompted_outputs(tmp_path):
    """`applefair.attach(net, patch)(images, boxes=b)` is what `segment()` validated."""
    net, spec = _net("sam", {"prompt": "box", "jitter": 2})
    batch = _batch(4, seed=5)
    patched = PatchedSegmentor(net, perturbers_for(net, [spec.site], batch, width=4, kind="conv"))
    with torch.no_grad():
        for p in patched.perturbers.parameters():
            p.normal_(0, 0.2)
    save_patch(tmp_path / "patch.safetensors", patched, {})
    patched.remove()
    fresh, _ = _net("sam", {"prompt": "box", "jitter": 2})  # the same deployed model, rebuilt
    attached = applefair.attach(fresh, tmp_path / "patch.safetensors")
    boxes = derive_prompts(batch["mask"], batch["index"], fresh.prompt)["boxes"]
    with torch.no_grad():
        validated = segment(attached, batch)
        called = attached(batch["image"], boxes=boxes)
        attached.enabled = False
        unpatched = attached(batch["image"], boxes=boxes)
    torch.testing.assert_close(called, validated, rtol=0, atol=0)
    assert not torch.allclose(called, unpatched, atol=1e-4)  # the patch acts on the prompted call


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"boxes": torch.zeros(3, 4)}, r"boxes of shape \(3, 4\): expected \(2, 4\)"),
    ({"boxes": torch.zeros(2, 2, 2)}, r"boxes of shape \(2, 2, 2\)"),
    ({"points": torch.zeros(2, 1, 3)}, r"points of shape \(2, 1, 3\): expected \(2, K, 2\)"),
    ({"points": torch.zeros(2, 1, 2), "labels": torch.ones(2, 3)}, r"labels of shape \(2, 3\): expected \(2, 1\)"),
    ({"points": torch.zeros(2, 1, 2), "labels": torch.full((2, 1), 0.5)}, "labels of shape"),
    ({"labels": torch.ones(2, 1)}, "labels given without points"),
])
def test_bad_prompts_are_input_errors(kwargs, match):
    net, _ = _net("sam", {"prompt": "box"})
    with pytest.raises(InputError, match=match):
        net(torch.rand(2, 1, 64, 64), **kwargs)


def test_samed_refuses_prompts():
    net, _ = _net("samed", {})
    with pytest.raises(InputError, match="takes no prompt"):
        net(torch.rand(2, 1, 64, 64), boxes=torch.zeros(2, 4))
