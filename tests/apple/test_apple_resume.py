"""A run killed (SIGKILL) after an epoch's checkpoint resumes to the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import applefair.apple.trainer as trainer
from applefair.apple import AppleConfig, train_apple
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.models.registry import load_model_dir

manifest, model_dir, run_dir = sys.argv[1:4]
kill_after, resume = int(sys.argv[4]), sys.argv[5] == "1"
save = trainer.save_checkpoint

def save_then_wait(*args, **kwargs):
    save(*args, **kwargs)
    if kwargs["meta"]["epoch"] == kill_after:
        print("CHECKPOINT", kill_after, flush=True)
        time.sleep(600)  # the parent kills us here

trainer.save_checkpoint = save_then_wait
frame = read_manifest(manifest)
groups = GroupSpec("sex").fit(frame)
net, spec = load_model_dir(model_dir)
cfg = AppleConfig(epochs=4, perturber="conv", width=8, d_hidden=16, batch_size=8, d_warmup=1)
res = train_apple(net, spec.site, SegmentationDataset(frame, groups, "train"),
                  SegmentationDataset(frame, groups, "val"), groups, cfg, quiet=True, run_dir=run_dir, resume=resume)
state = res.patched.perturbers.state_dict()
print("RESULT", json.dumps({"history": res.history, "selected": res.selected_epoch,
                            "state": {k: v.flatten().tolist() for k, v in state.items()}}), flush=True)
"""


def _child(args, env):
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], stdout=subprocess.PIPE, text=True, env=env)


def _result(proc) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_manifest, apple_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # 1) killed after epoch 2's checkpoint
    proc = _child([tiny_manifest, apple_model_dir, tmp_path / "run", 2, 0], env)
    deadline = time.time() + 600
    for line in proc.stdout:
        if line.startswith("CHECKPOINT 2") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    from applefair.apple.checkpoint import checkpoint_epoch

    assert checkpoint_epoch(tmp_path / "run" / "checkpoint.safetensors") == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]  # atomic writes only
    # 2) resumed, and 3) an uninterrupted reference run, in parallel
    resumed = _child([tiny_manifest, apple_model_dir, tmp_path / "run", -1, 1], env)
    reference = _child([tiny_manifest, apple_model_dir, tmp_path / "ref", -1, 0], env)
    a, b = _result(resumed), _result(reference)
    assert [r["epoch"] for r in a["history"]] == [0, 1, 2, 3, 4]
    assert a["selected"] == b["selected"]
    for ra, rb in zip(a["history"], b["history"], strict=True):
        for key in ("l_seg", "l_d", "d_acc", "val_dice", "val_es_dice", "probe_auc"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["epoch"], key)
    for k in b["state"]:
        assert torch.allclose(torch.tensor(a["state"][k]), torch.tensor(b["state"][k]), atol=1e-6), k
