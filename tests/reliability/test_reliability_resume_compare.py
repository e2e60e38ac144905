"""`applefair compare` killed (SIGKILL) in the middle of writing a cell, then rerun, gives the table
of an uninterrupted run; no half-written cell is ever taken as finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from applefair.workflows.compare.cells import cell_dir
from applefair.workflows.compare.run import run_compare
from applefair.workflows.compare.settings import load_compare_settings

CONFIG = {
    "name": "kill", "seeds": [0, 1], "deploy": {"epochs": 1, "batch_size": 8}, "budget": {"epochs": 1, "batch_size": 8},
    "bootstrap": 20, "leakage": False,
    "datasets": [{"name": "nod", "synthetic": {"n": 32, "size": 32, "bias": "gain", "minority_share": 0.4},
                  "groups": "sex"}],
    "segmentors": [{"name": "unet", "tiny": True, "args": {"channels": [4, 8, 16, 16]}}],
    "methods": ["erm", "groupdro"],
}

# dies while cell 5 (seed 1, erm) is being written: its scores are in the staging folder, its result.json is not
CHILD = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import applefair.engine.runfolder as compare

write = compare.write_json
seen = []

def write_then_wait(path, obj):
    if str(path).endswith("result.json"):
        seen.append(path)
        if len(seen) == 5:
            print("MIDCELL", path, flush=True)
            time.sleep(600)  # the parent kills us here
    write(path, obj)

compare.write_json = write_then_wait
sys.argv = ["applefair", "compare", "--config", sys.argv[1], "--out", sys.argv[2], "--quiet"]
from applefair.cli import main
main()
"""

TIMES = ("seconds", "wall_seconds")


def _table(out: Path) -> pd.DataFrame:
    cells = pd.read_csv(out / "results.csv")
    return cells.drop(columns=[c for c in cells.columns if c in TIMES])


@pytest.mark.slow
def test_compare_killed_mid_cell_resumes_to_the_uninterrupted_table(tmp_path):
    cfg = tmp_path / "kill.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    settings, root = load_compare_settings(cfg)
    run, ref = tmp_path / "run", tmp_path / "ref"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert run_compare(settings, root, ref, quiet=True) == {"run": 6, "skipped": 0, "failed": 0, "left": 0}
        deadline, seen = time.time() + 300, []
        for line in child.stdout:
            seen.append(line)
            if line.startswith("MIDCELL") or time.time() > deadline:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "".join(seen)
    # the cell being written exists only as a hidden staging folder, with scores but no result.json
    erm1 = cell_dir(run, "nod", "unet", "erm", 1)
    assert not erm1.exists()
    staged = [p for p in erm1.parent.iterdir() if p.name.startswith(".seed1.") and p.name.endswith(".partial")]
    assert len(staged) == 1 and (staged[0] / "per_sample.csv").is_file() and not (staged[0] / "result.json").exists()
    # a half-written cell of another kind: its files, and a result.json cut short
    dro1 = cell_dir(run, "nod", "unet", "groupdro", 1)
    dro1.mkdir(parents=True)
    (dro1 / "per_sample.csv").write_text("id,dice\n")
    (dro1 / "result.json").write_text('{"status": "done", "key": "')
    # and a cell that claims to be done but lost its metrics: redone, not read
    dep1 = cell_dir(run, "nod", "unet", "deployed", 1)
    (dep1 / "metrics.json").unlink()

    counts = run_compare(settings, root, run, quiet=True)
    assert counts == {"run": 3, "skipped": 3, "failed": 0, "left": 0}
    pd.testing.assert_frame_equal(_table(run), _table(ref), check_exact=False, rtol=0, atol=1e-12)
    assert (_table(run)["status"] == "done").all()
    summary_run, summary_ref = pd.read_csv(run / "summary.csv"), pd.read_csv(ref / "summary.csv")
    keep = [c for c in summary_ref.columns if "second" not in c and "time" not in c]
    pd.testing.assert_frame_equal(summary_run[keep], summary_ref[keep])
