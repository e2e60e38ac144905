"""Checkpoints: safe loading (no pickle), clear errors for the wrong architecture, SAM files."""

from __future__ import annotations

import pytest
import torch

from applefair.errors import InputError
from applefair.models import create_segmentor, load_checkpoint, load_model_dir, read_checkpoint, save_model_dir


class _Payload:
    """Unpickling this object would create a file: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(str(marker))}, path)
    with pytest.raises(InputError, match="refused to load"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is dangerous once pickle is enabled
    assert marker.exists()


def test_state_dict_files_load_with_common_wrappers(tmp_path):
    torch.manual_seed(0)
    src, _ = create_segmentor("unet", tiny=True)
    state = src.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pt")
    dst, _ = create_segmentor("unet", tiny=True)
    load_checkpoint(dst, "unet", tmp_path / "ddp.pt")
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in state.items())


def test_wrong_architecture_is_a_clear_error(tmp_path):
    src, spec = create_segmentor("unet", tiny=True)
    torch.save(src.state_dict(), tmp_path / "unet.pth")
    other, _ = create_segmentor("attention_unet", tiny=True)
    with pytest.raises(InputError, match=r"unet\.pth: weights do not fit architecture 'attention_unet'"):
        load_checkpoint(other, "attention_unet", tmp_path / "unet.pth")
    wider, _ = create_segmentor("unet", channels=[16, 32, 64, 128], strides=[2, 2, 2], num_res_units=1)
    with pytest.raises(InputError, match="wrong shape"):
        load_checkpoint(wider, "unet", tmp_path / "unet.pth")
    # a model folder whose yaml names another architecture
    save_model_dir(tmp_path / "m", src, spec)
    (tmp_path / "m" / "model.yaml").write_text("name: dynunet\nargs: {filters: [8, 16, 32, 64]}\n")
    with pytest.raises(InputError, match="'dynunet'"):
        load_model_dir(tmp_path / "m")


def test_not_a_checkpoint_is_an_input_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_sam_checkpoint_loads_at_another_size_and_into_samed(tmp_path):
    torch.manual_seed(0)
    sam, _ = create_segmentor("sam", tiny=True)
    torch.save(sam.sam.state_dict(), tmp_path / "sam_tiny.pth")  # a bare SAM state dict, as Meta/MedSAM ship
    same, _ = create_segmentor("sam", tiny=True)
    load_checkpoint(same, "sam", tmp_path / "sam_tiny.pth")
    assert torch.equal(same.sam.mask_decoder.iou_token.weight, sam.sam.mask_decoder.iou_token.weight)
    bigger, _ = create_segmentor("sam", variant="tiny", img_size=128)  # position embeddings interpolated
    load_checkpoint(bigger, "sam", tmp_path / "sam_tiny.pth")
    assert bigger.sam.image_encoder.pos_embed.shape[1:3] == (16, 16)
    with torch.no_grad():
        assert torch.isfinite(bigger.eval()(torch.rand(1, 1, 128, 128))).all()
    samed, _ = create_segmentor("samed", tiny=True)  # LoRA adapters are absent from SAM files: allowed
    load_checkpoint(samed, "samed", tmp_path / "sam_tiny.pth")
    qkv = samed.sam.image_encoder.blocks[0].attn.qkv
    assert torch.equal(qkv.weight, sam.sam.image_encoder.blocks[0].attn.qkv.weight)
    unet, _ = create_segmentor("unet", tiny=True)
    with pytest.raises(InputError, match="'unet'"):
        load_checkpoint(unet, "unet", tmp_path / "sam_tiny.pth")
