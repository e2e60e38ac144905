"""The fairness patch (save / attach), export to TorchScript and ONNX, and the latent cache storage."""

from __future__ import annotations

import json

import pytest
import torch

import applefair
from applefair.apple.patch import PatchedSegmentor, perturbers_for, read_patch_header, save_patch
from applefair.errors import InputError


def _random_patch(net, spec, kind="unet"):
    torch.manual_seed(1)
    sites = list(spec.skip_sites[:1]) + [spec.site]
    x = torch.rand(2, 1, 64, 64)
    patched = PatchedSegmentor(net, perturbers_for(net, sites, x, 4, kind, global_branch=True))
    with torch.no_grad():
        for p in patched.perturbers.parameters():
            p.normal_(0, 0.2)
    return patched.eval(), sites


def test_patch_roundtrip_attaches_to_the_unchanged_model(apple_setup, apple_model_dir, tmp_path):
    from applefair.models.registry import load_model_dir

    net, spec, groups, _ = apple_setup
    patched, sites = _random_patch(net, spec)
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        expected = patched(x)
        patched.enabled = False
        plain = patched(x)
    assert not torch.allclose(expected, plain)  # the patch changes the output
    save_patch(tmp_path / "patch.safetensors", patched, {"groups": groups.to_dict(), "apple": {"width": 4}})
    header = read_patch_header(tmp_path / "patch.safetensors")
    assert header["sites"] == sites and header["groups"]["attribute"] == "sex"
    assert header["perturbers"][spec.site]["kind"] == "unet"
    fresh, _ = load_model_dir(apple_model_dir)
    attached = applefair.attach(fresh, tmp_path / "patch.safetensors")
    with torch.no_grad():
        assert torch.allclose(attached(x), expected, atol=1e-6)
    attached.remove()
    with torch.no_grad():
        assert torch.allclose(fresh(x), plain, atol=1e-6)  # removing the hooks gives back the deployed model


def test_attach_rejects_files_that_are_not_patches(apple_setup, tmp_path):
    from applefair.engine.io import save_tensors

    net, _, _, _ = apple_setup
    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(InputError, match="not an applefair patch"):
        applefair.attach(net, tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError):
        applefair.attach(net, tmp_path / "junk.safetensors")


def test_export_torchscript_and_onnx_match_eager(apple_setup, tmp_path):
    pytest.importorskip("onnxruntime")
    from applefair.apple.export import check_export, export_onnx, export_torchscript

    net, spec, _, _ = apple_setup
    patched, _ = _random_patch(net, spec, kind="conv")
    example = torch.rand(2, 1, 64, 64)
    ts = export_torchscript(patched, example, tmp_path / "m.pt")
    onnx_path = export_onnx(patched, example, tmp_path / "m.onnx")
    diffs = check_export(patched, torch.rand(3, 1, 64, 64), ts, onnx_path)  # another batch size too
    assert diffs["torchscript_max_abs_diff"] < 1e-5
    assert diffs["onnx_max_abs_diff"] < 1e-4
    patched.remove()


def test_disk_cache_equals_memory_cache(apple_setup, tmp_path):
    from applefair.apple.cache import LatentCache

    net, spec, _, split = apple_setup
    mem = LatentCache.build(net, [spec.site], split["train"], batch_size=16)
    disk = LatentCache.build(net, [spec.site], split["train"], batch_size=16, folder=tmp_path / "cache")
    assert mem.names == disk.names and spec.site in mem.names
    idx = torch.tensor([3, 0, 5])
    for n in mem.names:
        assert torch.allclose(mem.lookup(n, idx), disk.lookup(n, idx), atol=1e-6)
    # replaying gives the same logits as running the encoder
    batch = {"image": torch.stack([split["train"][i]["image"] for i in idx.tolist()]), "index": idx}
    with torch.no_grad():
        direct = net(batch["image"])
        with mem.replay(idx):
            replayed = net(batch["image"] * 0)  # the input is not even looked at
    assert torch.allclose(direct, replayed, atol=1e-5)
    assert "forward" not in vars(net.model[0])  # the swap is undone


def test_patch_header_is_json(apple_setup, tmp_path):
    net, spec, groups, _ = apple_setup
    patched, _ = _random_patch(net, spec)
    save_patch(tmp_path / "p.safetensors", patched, {"groups": groups.to_dict(), "apple": {"alpha": 1.0}})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "applefair-patch/1"
    assert json.loads(meta["meta"])["apple"]["alpha"] == 1.0
    patched.remove()


def test_a_site_takes_one_live_patch_at_a_time(apple_setup):
    """A second patch on a patched site would silently stack two perturbations: it is refused until .remove()."""
    net, spec, _, _ = apple_setup
    x = torch.rand(2, 1, 64, 64)
    first = PatchedSegmentor(net, perturbers_for(net, [spec.site], x, 8, "conv"))
    with pytest.raises(InputError, match="already carry a fairness patch"):
        PatchedSegmentor(net, perturbers_for(net, [spec.site], x, 8, "conv"))
    first.remove()
    second = PatchedSegmentor(net, perturbers_for(net, [spec.site], x, 8, "conv"))  # fine once removed
    second.remove()
    first.remove()  # removing twice is harmless


def test_a_patch_knows_its_model(apple_setup, tmp_path, tiny_manifest, capsys, monkeypatch):
    """attach() compares the deployed weights' hash stored in the patch with the model's: other weights of the
    same architecture are refused (one line naming both hashes), or attached with a warning when not strict;
    `evaluate --patch` does the same, exit code 2."""
    import sys
    import warnings

    from applefair.apple.patch import PatchMismatchWarning, attach
    from applefair.engine.io import state_dict_hash
    from applefair.models.registry import create_segmentor, save_model_dir

    net, spec, _, _ = apple_setup
    patched, _ = _random_patch(net, spec)
    path = tmp_path / "patch.safetensors"
    save_patch(path, patched, {"groups": {"attribute": "sex", "groups": ["F", "M"]},
                               "deployed_weights_sha256": state_dict_hash(net)})
    patched.remove()
    attach(net, path).remove()  # its own model: fine
    other, _ = create_segmentor(spec.name, seed=123, **spec.args)  # same architecture, other weights
    mine, theirs = state_dict_hash(net)[:12], state_dict_hash(other)[:12]
    assert mine != theirs
    with pytest.raises(InputError, match=f"sha256 {mine}.*are {theirs}"):
        attach(other, path)
    assert not any(getattr(m, "_applefair_patched", False) for m in other.modules())  # nothing left attached
    with pytest.warns(PatchMismatchWarning, match=mine):
        attach(other, path, strict=False).remove()
    # the command line: exit 2 and one line; --no-strict evaluates anyway
    save_model_dir(tmp_path / "other", other, spec)
    from applefair.cli import main

    def run(*extra):
        monkeypatch.setattr(sys, "argv", ["applefair", "evaluate", "--data", str(tiny_manifest), "--model",
                                          str(tmp_path / "other"), "--patch", str(path), "--attribute", "sex",
                                          "--bootstrap", "0", "--no-leakage", "--quiet", *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main()
            except SystemExit as exc:
                return int(exc.code or 0)
        return 0

    assert run("--out", str(tmp_path / "refused")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and mine in err and theirs in err
    assert not (tmp_path / "refused").exists()
    assert run("--out", str(tmp_path / "forced"), "--no-strict") == 0
    assert (tmp_path / "forced" / "metrics.json").is_file()
