"""`applefair train` killed (SIGKILL) after an epoch's checkpoint, then `--resume`d, ends bit-identical
to an uninterrupted run; a resume with other settings is one line of bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from applefair.data.synthetic import generate

CHILD = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import applefair.training.erm as train

kill_after = int(sys.argv[1])
save = train.save_state

def save_then_wait(*args, **kwargs):
    save(*args, **kwargs)
    if kwargs["meta"]["epoch"] == kill_after:
        print("CHECKPOINT", kill_after, flush=True)
        time.sleep(600)  # the parent kills us here

train.save_state = save_then_wait
sys.argv = ["applefair", *sys.argv[2:]]
from applefair.cli import main
main()
"""


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "unet", "--tiny", "--arg", "channels=[4,8,16,16]", "--epochs", "4",
            "--batch-size", "8", "--seed", "5", "--out", str(out), "--quiet", *extra]


def _cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from applefair.cli import main

    monkeypatch.setattr(sys, "argv", ["applefair", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.slow
def test_train_resume_after_sigkill_is_bit_identical(tmp_path, monkeypatch, capsys):
    from applefair.engine.trainstate import state_epoch

    data = generate(tmp_path / "data", n=24, size=32, seed=0)
    run, ref = tmp_path / "run", tmp_path / "ref"
    stage = tmp_path / ".run.resume.partial"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, "2", *_args(data, run)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        # the uninterrupted reference runs here while the child trains
        code, text = _cli(_args(data, ref), monkeypatch, capsys)
        assert code == 0, text
        deadline = time.time() + 300
        for line in child.stdout:
            if line.startswith("CHECKPOINT 2") or time.time() > deadline:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    # the killed run left no --out folder, only its hidden stage with the epoch-2 checkpoint
    assert not run.exists()
    assert state_epoch(stage / "checkpoint.safetensors") == 2
    assert not [p for p in stage.iterdir() if p.name.endswith(".tmp")]

    # without --resume, the interrupted run is not silently thrown away
    code, text = _cli(_args(data, run), monkeypatch, capsys)
    assert code == 2 and "--resume" in text and "Traceback" not in text, text
    # resuming with other settings: one line naming the setting; the checkpoint stays
    code, text = _cli(_args(data, run, "--resume", "--lr", "0.01"), monkeypatch, capsys)
    assert code == 2 and "train.lr" in text and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    assert state_epoch(stage / "checkpoint.safetensors") == 2 and not run.exists()

    code, text = _cli(_args(data, run, "--resume"), monkeypatch, capsys)
    assert code == 0, text
    assert not stage.exists() and not (run / "checkpoint.safetensors").exists()
    a, b = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = pd.read_csv(run / "history.csv"), pd.read_csv(ref / "history.csv")
    assert list(ha["epoch"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    assert "resuming ERM training after epoch 2" in (run / "run.log").read_text()
    # a finished run has nothing to resume
    code, text = _cli(_args(data, run, "--resume"), monkeypatch, capsys)
    assert code == 2 and "finished" in text, text
