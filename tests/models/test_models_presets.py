"""Presets of the zoo: named constructor arguments, resolved wherever a model name is accepted, described
(parameters, latent shape) on the meta device, and still buildable with --tiny."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from applefair.cli import app
from applefair.commands.models import format_params
from applefair.errors import InputError
from applefair.models import create_segmentor, list_models, list_sites, load_model_dir, save_model_dir, segment
from applefair.models.describe import cache_file, describe_model, describe_or_why, describe_zoo
from applefair.models.registry import list_presets, model_info, preset

# name -> (builder, input side, parameter class (low, high), latent shape from the architecture)
SAM_B = (85e6, 100e6)
PRESETS = {
    "sam_vit_b_1024": ("sam", 1024, SAM_B, (256, 1024 // 16, 1024 // 16)),  # 16 px patches, 256-d neck
    "medsam_vit_b_1024": ("sam", 1024, SAM_B, (256, 64, 64)),
    "sam_vit_b_512": ("sam", 512, SAM_B, (256, 32, 32)),
    "sam_vit_b_256": ("sam", 256, SAM_B, (256, 16, 16)),
    "samed_vit_b_512": ("samed", 512, SAM_B, (256, 32, 32)),
    "unet_large": ("unet", 512, (10e6, 30e6), (1024, 512 // 2 ** 4, 512 // 2 ** 4)),  # 4 stride-2 levels
    "dynunet_large": ("dynunet", 256, (10e6, 30e6), (512, 256 // 2 ** 5, 256 // 2 ** 5)),  # 5 stride-2 levels
}
runner = CliRunner()


def test_presets_are_model_names():
    assert set(PRESETS) <= set(list_presets())
    assert set(list_presets()) <= set(list_models())
    assert not set(list_presets()) & set(list_models(presets=False))
    with pytest.raises(InputError, match="not known.*sam_vit_b_1024"):
        create_segmentor("sam_vit_b_2048")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_described_on_meta_in_its_class(name):
    builder, size, (low, high), latent = PRESETS[name]
    d = describe_model(name)
    assert d["traced_on"] == "meta"  # no weights allocated, no arithmetic: `models list` stays fast
    assert d["builder"] == builder and d["size"] == size
    assert low <= d["params"] <= high, d["params"]
    assert d["latent_shape"] == latent
    info = model_info(name)
    assert info["preset_of"] == builder and info["size"] == size


def test_samed_preset_adds_lora_to_the_same_encoder():
    sam, samed = describe_model("sam_vit_b_512"), describe_model("samed_vit_b_512")
    lora = 12 * 2 * 2 * 768 * 4  # 12 blocks, q and v, a and b matrices, 768-d, rank 4
    assert samed["params"] - sam["params"] == lora


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_preset_builds_runs_and_keeps_its_other_arguments(name):
    builder = PRESETS[name][0]
    net, spec = create_segmentor(name, tiny=True, seed=0)
    assert spec.name == builder and spec.preset == name
    assert sum(p.numel() for p in net.parameters()) < 1e6
    preset_args = model_info(name)["args"]
    for k in set(preset_args) - set(model_info(builder)["tiny"]) - {"img_size"}:
        assert spec.args[k] == preset_args[k], k  # e.g. medsam's normalize, samed's rank
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert segment(net.eval(), {"image": x}).shape == (2, 1, 64, 64)
    # the meta trace gives what a real forward pass gives
    d = describe_model(name, tiny=True)
    real = {s.name: s.shape for s in list_sites(net, torch.rand(1, 1, d["size"], d["size"]), spec.site)}
    assert real[spec.site][1:] == d["latent_shape"]
    assert d["params"] == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", ["unet", "attention_unet", "swin_unetr", "dynunet", "smp_unet", "sam", "samed",
                                  "nnunet"])
def test_description_equals_a_real_forward_pass(name):
    """Traced on meta (or, where a constructor computes on tensors, on the CPU), the description is
    what the built network reports."""
    d = describe_model(name, tiny=True)
    net, spec = create_segmentor(name, tiny=True)
    example = torch.rand(1, spec.in_channels, *[d["size"]] * spec.spatial_dims)
    real = {s.name: s.shape for s in list_sites(net, example, spec.site)}
    assert real[spec.site][1:] == d["latent_shape"] and d["site"] == spec.site
    assert d["params"] == sum(p.numel() for p in net.parameters())


def test_builders_that_need_arguments_are_listed_without_numbers(zoo_cache):
    _, _, result = zoo_cache
    assert "error" in describe_or_why("custom") and "error" not in describe_or_why("unet")
    rows = {line.split("│")[1].strip(): line.split("│") for line in result.output.splitlines() if line.count("│") > 3}
    assert [c.strip() for c in rows["custom"][3:6]] == ["-", "-", "-"]


def test_arguments_override_the_preset():
    net, spec = create_segmentor("sam_vit_b_256", tiny=True, prompt="point", img_size=32)
    assert net.prompt.mode == "point" and net.img_size == 32 and spec.args["variant"] == "tiny"


def test_model_folder_records_the_preset_and_reloads(tmp_path):
    net, spec = create_segmentor("medsam_vit_b_1024", tiny=True, seed=0)
    save_model_dir(tmp_path / "m", net, spec)
    meta = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    assert meta["name"] == "sam" and meta["preset"] == "medsam_vit_b_1024" and meta["args"]["normalize"] == "minmax"
    loaded, _ = load_model_dir(tmp_path / "m")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), net.eval()(x))
    # a model.yaml may also name a preset: its arguments fill in what the file leaves out
    meta.update(name="medsam_vit_b_1024", args={"variant": "tiny", "img_size": None})
    (tmp_path / "m" / "model.yaml").write_text(yaml.safe_dump(meta))
    again, _ = load_model_dir(tmp_path / "m")
    assert again.normalize == "minmax"


def test_preset_declaration_is_checked():
    with pytest.raises(ValueError, match="not registered"):
        preset("x_large", "no_such_builder", {})
    with pytest.raises(ValueError, match="hide the builder"):
        preset("unet", "dynunet", {})


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    """A private cache folder, filled once by `applefair models list`."""
    folder = tmp_path_factory.mktemp("cache")
    env = {"APPLEFAIR_CACHE_DIR": str(folder), "COLUMNS": "250"}
    result = runner.invoke(app, ["models", "list"], env=env)
    return folder, env, result


def test_models_list_shows_params_and_latent_shapes(zoo_cache):
    _, _, result = zoo_cache
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    for name in [*PRESETS, "unet", "sam"]:
        d = describe_model(name)
        assert "x".join(map(str, d["latent_shape"])) in rows[name]
        assert format_params(d["params"]) in rows[name] and f"{d['size']} px" in rows[name]


def test_models_list_reads_its_cache_until_something_changes(zoo_cache, monkeypatch):
    folder, env, first = zoo_cache
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cache_file().parent == folder and cache_file().is_file()
    stored = json.loads(cache_file().read_text())
    assert set(stored["models"]) == set(list_models())

    def no_tracing(*_a, **_k):
        raise AssertionError("described again although the cache is current")

    monkeypatch.setattr("applefair.models.describe.describe_model", no_tracing)
    again = runner.invoke(app, ["models", "list"], env=env)
    assert again.exit_code == 0 and again.output == first.output
    cached = describe_zoo()
    assert cached["sam_vit_b_1024"]["latent_shape"] == PRESETS["sam_vit_b_1024"][3]
    # a different fingerprint (new code, model table or library version) describes afresh
    cache_file().write_text(json.dumps({**stored, "fingerprint": "stale"}))
    with pytest.raises(AssertionError, match="described again"):
        describe_zoo()
    with pytest.raises(AssertionError, match="described again"):
        describe_zoo(cache=False)  # --no-cache


def test_train_accepts_a_preset_name(tmp_path):
    src, _ = create_segmentor("samed_vit_b_512", tiny=True, seed=1)
    torch.save(src.state_dict(), tmp_path / "weights.pth")
    result = runner.invoke(app, ["train", "--model", "samed_vit_b_512", "--tiny", "--epochs", "0", "--checkpoint",
                                 str(tmp_path / "weights.pth"), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 0, result.output
    net, spec = load_model_dir(tmp_path / "m")
    assert spec.name == "samed" and spec.preset == "samed_vit_b_512" and spec.args["rank"] == 4
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), src.eval()(x))
