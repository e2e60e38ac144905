"""Disk full, permission denied, read-only: one line naming the file, exit code 1, no traceback,
no temporary file left, and no half-written --out folder."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import applefair.engine.io as afio
from applefair.errors import OutputError, as_output_error


def _cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from applefair.cli import main

    monkeypatch.setattr(sys, "argv", ["applefair", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out + err


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith((".tmp", ".partial")))


def _full(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "runs" / "report.json"
    afio.write_json(target, {"v": 1})
    monkeypatch.setattr(Path, "write_text", _full)
    with pytest.raises(OutputError) as info:
        afio.write_json(target, {"v": 2})
    assert str(info.value) == f"cannot write {target}: no space left on device"
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()  # old file intact
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only file system"), (errno.EDQUOT, "quota exceeded")])
def test_storage_errors_of_every_kind_become_one_line(tmp_path, monkeypatch, code, words):
    def refuse(*_a, **_k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(afio, "save_file", refuse)
    with pytest.raises(OutputError, match=words) as info:
        afio.save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    assert "\n" not in str(info.value) and "w.safetensors" in str(info.value)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "w.safetensors").exists()


def test_wrapped_writer_errors_are_recognised(tmp_path, monkeypatch):
    """safetensors reports the OS error inside its own exception's text."""
    from safetensors import SafetensorError

    def rust_full(*_a, **_k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(afio, "save_file", rust_full)
    with pytest.raises(OutputError, match="no space left on device"):
        afio.save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    assert as_output_error(ValueError("size code: 7")) is None  # only storage errnos count
    assert as_output_error(OSError(errno.ENOENT, "gone")) is None


def test_synth_on_a_full_disk_exits_1_with_one_line_and_no_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pd.DataFrame, "to_csv", _full)  # the manifest, written last
    out = tmp_path / "data"
    code, text = _cli(["synth", "nodules", "--out", out, "--n", "10", "--size", "32", "--quiet"], monkeypatch, capsys)
    assert code == 1, text
    assert "Traceback" not in text and "internal error" not in text and "crash" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "manifest.csv: no space left on device" in lines[0], text
    assert lines[0].startswith("error: cannot write ")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_train_on_a_full_disk_keeps_a_resumable_checkpoint_and_no_output(tmp_path, monkeypatch, capsys):
    from applefair.data.synthetic import generate

    data = generate(tmp_path / "d", n=16, size=32, seed=0)
    out = tmp_path / "model"
    args = ["train", "--data", data, "--model", "unet", "--tiny", "--arg", "channels=[4,8,16,16]", "--epochs", "2",
            "--batch-size", "8", "--augment", "none", "--out", out, "--quiet"]
    real = afio.save_file

    def full_for_the_model(tensors, path, metadata=None):
        if ".model.safetensors." in Path(path).name:  # the final weights; checkpoints still fit
            _full()
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(afio, "save_file", full_for_the_model)
    code, text = _cli(args, monkeypatch, capsys)
    assert code == 1 and "Traceback" not in text, text
    assert "model.safetensors: no space left on device" in text and len(text.strip().splitlines()) == 1, text
    assert not out.exists() and not [p for p in tmp_path.rglob("*.tmp")]
    stage = tmp_path / ".model.resume.partial"
    assert (stage / "checkpoint.safetensors").is_file()  # the work is not lost: space freed, --resume finishes
    monkeypatch.setattr(afio, "save_file", real)
    code, text = _cli([*args, "--resume"], monkeypatch, capsys)
    assert code == 0, text
    assert (out / "model.safetensors").is_file() and not stage.exists()


def test_compare_stops_on_a_full_disk_instead_of_failing_every_cell(tmp_path, monkeypatch):
    import yaml

    from applefair.workflows.compare.run import run_compare
    from applefair.workflows.compare.settings import load_compare_settings

    cfg = {"seeds": [0], "deploy": {"epochs": 1, "batch_size": 8}, "budget": {"epochs": 1, "batch_size": 8},
           "leakage": False, "datasets": [{"name": "d", "synthetic": {"n": 16, "size": 32}, "groups": "sex"}],
           "segmentors": [{"name": "unet", "tiny": True, "args": {"channels": [4, 8, 16, 16]}}], "methods": ["erm"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    settings, root = load_compare_settings(tmp_path / "c.yaml")
    monkeypatch.setattr(afio, "save_file", _full)  # the deployed model cannot be saved
    with pytest.raises(OutputError, match="model.safetensors: no space left on device"):
        run_compare(settings, root, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "cells" / "d" / "unet" / "deployed" / "seed0").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_read_only_output_folder(tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: file modes do not stop root's writes (the monkeypatched cases cover it)")
        out = parent / "data"
        code, text = _cli(["synth", "nodules", "--out", out, "--n", "10", "--size", "32", "--quiet"],
                          monkeypatch, capsys)
        assert code == 1 and "Traceback" not in text, text
        assert "permission denied" in text and str(parent) in text and len(text.strip().splitlines()) == 1, text
        assert not out.exists()
    finally:
        parent.chmod(stat.S_IRWXU)


def test_read_only_file_system_at_the_start(tmp_path, monkeypatch, capsys):
    """The staging folder cannot even be made (EROFS): the --out folder is named, nothing is left."""
    import tempfile

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "data"
    code, text = _cli(["synth", "nodules", "--out", out, "--n", "10", "--size", "32", "--quiet"], monkeypatch, capsys)
    assert code == 1 and "Traceback" not in text, text
    assert text.strip() == f"error: cannot write {out}: read-only file system", text
    assert not out.exists() and _leftovers(tmp_path) == []


def test_permission_errors_outside_a_write_say_access(tmp_path):
    err = as_output_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "in.csv")))
    assert str(err) == f"cannot access {tmp_path / 'in.csv'}: permission denied"
    full = as_output_error(OSError(errno.ENOSPC, "No space left on device", "log.txt"))
    assert str(full) == "cannot write log.txt: no space left on device"


def _limited(max_bytes: int):
    """In the child: files may not grow beyond `max_bytes` (the kernel then fails the write with EFBIG,
    as a full quota or a small file system would), and SIGXFSZ does not kill the process."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


@pytest.mark.parametrize("command", ["synth", "train"])
def test_a_real_size_limit_stops_the_run_with_one_line_and_no_output(tmp_path, command):
    """Not a monkeypatched error: the operating system refuses the write (RLIMIT_FSIZE), the run stops with
    exit 1 and one line naming a file, and no half-written output is left at --out."""
    import subprocess
    import sys

    from applefair.data.synthetic import generate

    data = generate(tmp_path / "data", n=20, size=32, seed=0) if command == "train" else None
    out = tmp_path / "out"
    args = (["synth", "nodules", "--n", "20", "--size", "64", "--out", str(out), "--quiet"] if command == "synth"
            else ["train", "--data", str(data), "--model", "unet", "--tiny", "--epochs", "1", "--out", str(out),
                  "--quiet"])
    proc = subprocess.run([sys.executable, "-m", "applefair", *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(2048), env={**os.environ, "APPLEFAIR_LOG_DIR": str(tmp_path / "logs")})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "file too large" in lines[0], lines
    assert not out.exists()
    assert not (tmp_path / "logs").exists()  # the machine's state, not a bug: no crash log
