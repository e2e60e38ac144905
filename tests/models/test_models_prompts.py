"""SAM prompts: derived from the ground truth, deterministic per (sample index, seed), and used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from applefair.errors import InputError
from applefair.models import PromptConfig, create_segmentor, derive_prompts, segment


def _masks() -> torch.Tensor:
    m = torch.zeros(3, 1, 32, 40)
    m[0, 0, 5:12, 8:20] = 1
    m[1, 0, 20:30, 2:6] = 1  # sample 2 stays empty
    return m


def test_box_is_the_bounding_box_without_jitter():
    boxes = derive_prompts(_masks(), [0, 1, 2], PromptConfig("box"))["boxes"]
    assert boxes.tolist() == [[8, 5, 19, 11], [2, 20, 5, 29], [0, 0, 39, 31]]  # empty mask: whole image


def test_jittered_prompts_are_deterministic_per_index_and_seed():
    cfg = PromptConfig("box", jitter=4, seed=7)
    a = derive_prompts(_masks(), [10, 11, 12], cfg)["boxes"]
    b = derive_prompts(_masks(), [10, 11, 12], cfg)["boxes"]
    assert torch.equal(a, b)
    alone = derive_prompts(_masks()[1:2], [11], cfg)["boxes"]  # independent of the batch it falls in
    assert torch.equal(alone[0], a[1])
    seeds = {tuple(derive_prompts(_masks(), [10, 11, 12], PromptConfig("box", 4, s))["boxes"][0].tolist())
             for s in range(8)}
    assert len(seeds) > 1  # the seed matters
    tight = torch.tensor([8.0, 5, 19, 11])
    assert (a[0, :2] <= tight[:2]).all() and (a[0, 2:] >= tight[2:]).all()  # widened only
    assert ((a[0] - tight).abs() <= 4).all()


def test_points_fall_inside_the_mask():
    masks = _masks()
    for jitter in (0, 3):
        p = derive_prompts(masks, [0, 1, 2], PromptConfig("point", jitter=jitter, seed=1))
        for i in range(2):
            x, y = p["points"][i, 0].long().tolist()
            assert masks[i, 0, y, x] == 1 and p["labels"][i, 0] == 1
        assert p["labels"][2, 0] == -1  # empty mask: no point
    centre = derive_prompts(masks, [0, 1, 2], PromptConfig("point"))["points"][0, 0].tolist()
    assert centre[1] in (8.0, 9.0) and 12 <= centre[0] <= 15  # interior of the 7x12 rectangle


def test_bad_prompt_config_is_an_input_error():
    with pytest.raises(InputError, match="prompt mode"):
        PromptConfig("scribble")
    with pytest.raises(InputError, match="jitter"):
        PromptConfig("box", jitter=-1)


@pytest.mark.parametrize("mode", ["box", "point"])
def test_sam_uses_the_prompts_and_is_reproducible(mode):
    torch.manual_seed(0)
    net, spec = create_segmentor("sam", tiny=True, prompt=mode, jitter=2, prompt_seed=3)
    net.eval()
    image = torch.rand(2, 1, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 10:30, 12:40] = 1
    batch = {"image": image, "mask": mask, "index": torch.tensor([4, 5])}
    with torch.no_grad():
        first, again = segment(net, batch), segment(net, batch)
        other = mask.clone()
        other[:, :, 10:30, 12:40] = 0
        other[:, :, 40:60, 45:62] = 1
        moved = segment(net, {**batch, "mask": other})
    assert first.shape == (2, 1, 64, 64)
    assert torch.equal(first, again)
    assert not torch.allclose(first, moved)  # the prompt reaches the mask decoder
    assert net._batch_prompts is None  # segment() hands the batch back after the forward pass
    assert np.isfinite(first.numpy()).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 6), st.sampled_from(["box", "point"]))
def test_prompts_stay_on_the_image_and_the_lesion(seed, jitter, mode):
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy((rng.random((1, 1, 24, 30)) > rng.uniform(0.5, 1.0)).astype(np.float32))
    p = derive_prompts(mask, [seed], PromptConfig(mode, jitter=jitter, seed=seed % 97))
    ys, xs = np.nonzero(mask[0, 0].numpy())
    if mode == "box":
        x0, y0, x1, y1 = p["boxes"][0].tolist()
        assert 0 <= x0 <= x1 <= 29 and 0 <= y0 <= y1 <= 23
        if len(ys):
            assert x0 <= xs.min() and x1 >= xs.max() and y0 <= ys.min() and y1 >= ys.max()
    elif len(ys):
        x, y = p["points"][0, 0].long().tolist()
        assert mask[0, 0, y, x] == 1


@pytest.mark.parametrize("mode", ["box", "point"])
def test_sam_wrapper_matches_segment_anythings_own_pipeline(mode):
    """At the encoder's input size the wrapper must give what `Sam.forward` gives for the same prompt."""
    torch.manual_seed(0)
    net, _ = create_segmentor("sam", tiny=True, prompt=mode)
    net.eval()
    image = torch.rand(1, 1, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 12:40, 20:50] = 1
    prompts = derive_prompts(mask, [0], net.prompt)
    entry = {"image": image[0].expand(3, -1, -1) * 255.0, "original_size": (64, 64)}
    if mode == "box":
        entry["boxes"] = prompts["boxes"]
    else:
        entry["point_coords"], entry["point_labels"] = prompts["points"], prompts["labels"]
    with torch.no_grad():
        ours = segment(net, {"image": image, "mask": mask, "index": torch.tensor([0])})
        ref = net.sam([entry], multimask_output=False)[0]
        theirs = net.sam.postprocess_masks(ref["low_res_logits"], (64, 64), (64, 64))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
