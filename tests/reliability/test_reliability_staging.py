"""`applefair.engine.io.resumable_dir`: the hidden stage of a checkpointing run, kept only while it can be resumed."""

from __future__ import annotations

import pytest

from applefair.engine.distributed import rank_resumable
from applefair.engine.io import resumable_dir, resume_stage
from applefair.errors import InputError

MARK = "checkpoint.safetensors"


def _fail_after(out, write_marker: bool, **kw):
    with pytest.raises(RuntimeError, match="boom"):
        with resumable_dir(out, MARK, **kw) as (stage, _):
            (stage / "config.yaml").write_text("a: 1\n")
            if write_marker:
                (stage / MARK).write_text("state")
            raise RuntimeError("boom")


def test_failed_run_keeps_its_stage_only_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    _fail_after(out, write_marker=False)
    assert not out.exists() and not resume_stage(out).exists()
    _fail_after(out, write_marker=True)
    assert not out.exists() and (resume_stage(out) / MARK).read_text() == "state"
    assert resume_stage(out).name == ".run.resume.partial"


def test_resume_rules(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError, match="no interrupted run"):
        with resumable_dir(out, MARK, resume=True):
            pass
    _fail_after(out, write_marker=True)
    with pytest.raises(InputError, match="interrupted run left its checkpoint"):
        with resumable_dir(out, MARK):
            pass
    with resumable_dir(out, MARK, resume=True) as (stage, resuming):
        assert resuming and (stage / "config.yaml").is_file()
        (stage / MARK).unlink()
        (stage / "model.yaml").write_text("m\n")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.yaml"]
    assert not resume_stage(out).exists()
    with pytest.raises(InputError, match="has finished"):
        with resumable_dir(out, MARK, resume=True):
            pass
    with pytest.raises(InputError, match="not empty"):
        with resumable_dir(out, MARK):
            pass


def test_overwrite_discards_an_interrupted_run(tmp_path):
    out = tmp_path / "run"
    _fail_after(out, write_marker=True)
    with resumable_dir(out, MARK, overwrite=True) as (stage, resuming):
        assert not resuming and not any(stage.iterdir())
        (stage / "x").write_text("1")
    assert (out / "x").is_file() and not resume_stage(out).exists()


def test_a_stage_without_checkpoint_is_started_again_on_resume(tmp_path):
    out = tmp_path / "run"
    resume_stage(out).mkdir(parents=True)
    (resume_stage(out) / "run.log").write_text("killed before epoch 1\n")
    with resumable_dir(out, MARK, resume=True) as (stage, resuming):
        assert not resuming and not any(stage.iterdir())


def test_other_ranks_resume_from_a_private_copy(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_after(out, write_marker=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with rank_resumable(out, MARK, resume=True) as (stage, resuming):
        assert resuming and stage != resume_stage(out) and (stage / MARK).read_text() == "state"
        (stage / MARK).write_text("rank 1")
    assert (resume_stage(out) / MARK).read_text() == "state" and not out.exists()


def test_staging_asks_no_rank_and_the_use_case_gives_other_ranks_a_scratch_folder(tmp_path, monkeypatch):
    """`io.staged_dir` publishes whatever the rank; `distributed.rank_stage` is how a use case keeps rank > 0 out."""
    from applefair.engine.distributed import rank_stage
    from applefair.engine.io import staged_dir

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with rank_stage(tmp_path / "ranked") as stage:
        (stage / "a.txt").write_text("rank 1")
    assert not (tmp_path / "ranked").exists() and not stage.exists()
    with staged_dir(tmp_path / "plain") as stage:
        (stage / "a.txt").write_text("published")
    assert (tmp_path / "plain" / "a.txt").read_text() == "published"
    monkeypatch.setenv("RANK", "0")
    with rank_stage(tmp_path / "main") as stage:
        (stage / "a.txt").write_text("rank 0")
    assert (tmp_path / "main" / "a.txt").read_text() == "rank 0"
