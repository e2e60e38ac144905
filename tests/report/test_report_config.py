"""config.py: YAML settings validated by pydantic, one-line errors naming the key."""

from __future__ import annotations

import pytest

from applefair.engine.config import load_config, resolve_settings
from applefair.engine.device import resolve_device
from applefair.errors import InputError
from applefair.workflows.demo import DemoSettings


def test_valid_config_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("quick: true\nseed: 3\nchannels: [8, 16, 32]\ndevice: cpu\n")
    s = load_config(p, DemoSettings)
    assert (s.quick, s.seed, s.channels, s.device) == (True, 3, [8, 16, 32], "cpu")


@pytest.mark.parametrize("text, expected", [
    ("seeed: 3\n", "unknown key 'seeed'"),
    ("seed: three\n", "key 'seed'"),
    ("channels: [8, x]\n", "key 'channels.1'"),
    ("device: tpu\n", "key 'device'"),
    ("minority_share: 1.5\n", "key 'minority_share'"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("seed: [1\n", "not valid YAML"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(p, DemoSettings)
    msg = str(err.value)
    assert expected in msg and str(p) in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", DemoSettings)


def test_command_line_overrides_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\nbias: noise\n")
    s = resolve_settings(DemoSettings, p, seed=7, bias=None, quick=None)
    assert (s.seed, s.bias, s.quick) == (7, "noise", False)
    assert resolve_settings(DemoSettings, None, seed=None).seed == 0
    with pytest.raises(InputError, match="key 'seed'"):
        resolve_settings(DemoSettings, None, seed=-1)


def test_device_resolution(monkeypatch):
    import torch

    assert str(resolve_device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert str(resolve_device("auto")) == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_device_setting_takes_what_the_resolver_takes():
    """Settings accept every --device form the resolver knows (cuda:N too) and name the key otherwise."""
    assert resolve_settings(DemoSettings, None, device="cuda:1").device == "cuda:1"
    with pytest.raises(InputError, match="key 'device'"):
        resolve_settings(DemoSettings, None, device="gpu")


def test_demo_model_picks_its_sizes_and_rejects_others():
    """The demo's model (sam by default) brings its own full and quick sizes; given keys still win."""
    from applefair.apple.config import AppleConfig
    from applefair.workflows.demo import SIZES

    sam = DemoSettings().resolved()
    assert sam.model == "sam" and sam.n == SIZES["sam"]["full"]["n"] and sam.apple_epochs == AppleConfig().epochs
    quick = DemoSettings(quick=True).resolved()
    assert (quick.n, quick.apple_epochs) == (SIZES["sam"]["quick"]["n"], SIZES["sam"]["quick"]["apple_epochs"])
    unet = DemoSettings(model="unet", n=64).resolved()
    assert unet.channels == SIZES["unet"]["full"]["channels"] and unet.n == 64
    with pytest.raises(InputError, match="key 'model'"):
        resolve_settings(DemoSettings, None, model="vit")
