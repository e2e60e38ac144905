"""`applefair compare`: cells, resume, filters, failures, config errors, and the smoke config."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from applefair.cli import app
from applefair.errors import InputError
from applefair.workflows.compare.run import run_compare
from applefair.workflows.compare.settings import load_compare_settings

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny", "seeds": [0], "deploy": {"epochs": 1, "batch_size": 8}, "budget": {"epochs": 1, "batch_size": 8},
    "bootstrap": 50, "datasets": [{"name": "nod", "synthetic": {"n": 40, "size": 32, "bias": "gain",
                                                               "minority_share": 0.4}, "groups": "sex"}],
    "segmentors": [{"name": "unet", "tiny": True, "args": {"channels": [4, 8, 16, 16]}}],
    "methods": ["erm", "groupdro"],
}


def _config(tmp_path: Path, **changes) -> tuple:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return load_compare_settings(path)


def test_run_resume_and_rerun_on_change(tmp_path):
    settings, root = _config(tmp_path)
    out = tmp_path / "run"
    counts = run_compare(settings, root, out, quiet=True)
    assert counts == {"run": 3, "skipped": 0, "failed": 0, "left": 0}  # deployed + 2 methods
    cells = pd.read_csv(out / "results.csv")
    assert set(cells["method"]) == {"deployed", "erm", "groupdro"} and (cells["status"] == "done").all()
    assert cells.loc[cells["method"] == "deployed", "frozen"].item()
    assert (out / "report.html").is_file() and "erm" in (out / "report.md").read_text()
    table = (out / "results.md").read_text()
    assert "| erm | 1/1 |" in table and "| groupdro | 1/1 |" in table and "3 of 3 cells finished" in table
    assert (out / "cells/nod/unet/erm/seed0/per_sample.csv").is_file()
    # leakage per cell: the logistic probe on the method's latent, the spatial probe at every decoder input
    assert cells["leakage_auc"].between(0, 1).all() and cells["spatial_auc"].between(0, 1).all()
    assert "| leak | spatial |" in table
    from applefair.models.registry import create_segmentor
    from applefair.workflows.evaluate import decoder_inputs

    _, spec = create_segmentor("unet", tiny=True, channels=[4, 8, 16, 16])
    record = yaml.safe_load((out / "cells/nod/unet/deployed/seed0/result.json").read_text())
    assert record["spatial_auc_site"] in decoder_inputs(spec) and len(decoder_inputs(spec)) > 1
    assert run_compare(settings, root, out, quiet=True)["skipped"] == 3  # resumed: nothing redone
    changed, _ = _config(tmp_path, budget={"epochs": 2, "batch_size": 8})
    assert run_compare(changed, root, out, quiet=True) == {"run": 2, "skipped": 1, "failed": 0, "left": 0}


def test_filters_and_failures_are_listed(tmp_path, monkeypatch):
    from applefair.baselines.groupdro import GroupDRO

    def boom(*_a, **_k):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(GroupDRO, "fit", boom)
    settings, root = _config(tmp_path, seeds=[0, 1])
    out = tmp_path / "run"
    counts = run_compare(settings, root, out, only={"seeds": [0]}, quiet=True)
    assert counts["failed"] == 1 and counts["run"] == 2
    table = (out / "results.md").read_text()
    assert "synthetic failure" in table and "not run" in table and "2 of 6 cells finished" in table
    assert "| groupdro | 0/2 (1 failed) |" in table


@pytest.mark.parametrize("change, message", [
    ({"methods": ["erm", "dro"]}, "method 'dro' is not known"),
    ({"segmentors": ["nounet"]}, "segmentor 'nounet' is not known"),
    ({"budget": {"epoch": 1}}, "unknown key"),
    ({"methods": [{"name": "febs", "options": {"gama": 2}}]}, "unknown key 'gama'"),
    ({"seed": [0]}, "unknown key 'seed'"),
    ({"methods": ["erm", "erm"]}, "appears twice"),
])
def test_config_errors(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        _config(tmp_path, **change)


def test_cli_bad_config_is_input_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nseeds: [0]\n")
    result = CliRunner().invoke(app, ["compare", "--config", str(path), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, InputError)


@pytest.mark.slow
def test_smoke_config_runs_every_method(tmp_path):
    """configs/smoke.yaml end to end through the command line (about a minute on 2 cores)."""
    result = CliRunner().invoke(app, ["compare", "--config", str(ROOT / "configs/smoke.yaml"),
                                      "--out", str(tmp_path / "smoke"), "--quiet"])
    assert result.exit_code == 0, result.output
    cells = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert (cells["status"] == "done").all()
    settings, _ = load_compare_settings(ROOT / "configs/smoke.yaml")
    assert set(cells["method"]) == {"deployed", *[m.name for m in settings.methods]}
    frozen = cells.set_index("method")["frozen"]
    assert frozen["apple"] and frozen["faap"] and not frozen["erm"]


def test_jobs_give_the_same_cells_as_one_process(tmp_path):
    """Two worker processes run the (seed, dataset, segmentor) blocks; at the same threads per process every
    number but wall time is equal."""
    settings, root = _config(tmp_path, seeds=[0, 1], methods=["erm"])
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_compare(settings, root, one, quiet=True, threads=1) == {"run": 4, "skipped": 0, "failed": 0, "left": 0}
    assert run_compare(settings, root, two, quiet=True, jobs=2, threads=1) == {"run": 4, "skipped": 0, "failed": 0,
                                                                               "left": 0}
    assert yaml.safe_load((two / "config.yaml").read_text())["run"]["threads"] == 1
    a, b = (pd.read_csv(d / "results.csv").sort_values(["seed", "method"]).reset_index(drop=True) for d in (one, two))
    timing = [c for c in a.columns if "seconds" in c or "time" in c]
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing))
    assert "pid" in (two / "compare.log").read_text()  # the workers log into the run's log
    assert run_compare(settings, root, two, quiet=True, jobs=2)["skipped"] == 4  # resumes with jobs too
    with pytest.raises(InputError, match="--jobs 0"):
        run_compare(settings, root, two, quiet=True, jobs=0)
    with pytest.raises(InputError, match="--threads 0"):
        run_compare(settings, root, two, quiet=True, threads=0)


def test_compare_under_torchrun_points_to_jobs(tmp_path, monkeypatch):
    settings, root = _config(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="use --jobs N instead of torchrun"):
        run_compare(settings, root, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
