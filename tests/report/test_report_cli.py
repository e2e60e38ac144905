"""CLI conventions: --version, help with examples, exit codes 0 / 2 / 1 with a crash log."""

from __future__ import annotations

import sys

import pytest


def _main(monkeypatch, *argv: str) -> int:
    from applefair.cli import main

    monkeypatch.setattr(sys, "argv", ["applefair", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code or 0


def test_version(monkeypatch, capsys):
    import applefair

    assert _main(monkeypatch, "--version") == 0
    assert capsys.readouterr().out.strip() == f"applefair {applefair.__version__}"


def _leaf_commands(group, prefix=""):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_command_has_help_with_an_example():
    import typer

    from applefair.cli import app

    commands = dict(_leaf_commands(typer.main.get_command(app)))
    assert {"demo", "report"} <= set(commands)
    for name, cmd in commands.items():
        assert cmd.help and "Example:" in cmd.help, f"command '{name}' lacks an 'Example:' line in its help"


def test_report_command_ok_and_bad_input(monkeypatch, capsys, tmp_path, tiny_run):
    (tmp_path / "history.csv").write_text((tiny_run / "history.csv").read_text())
    assert _main(monkeypatch, "report", str(tmp_path), "--quiet") == 0
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.log").is_file()
    assert _main(monkeypatch, "report", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run folder not found" in err and "Traceback" not in err


def test_demo_rejects_unknown_config_key_before_running(monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("quick: true\nepochs: 3\n")
    assert _main(monkeypatch, "demo", "--config", str(cfg), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epochs'" in err and not (tmp_path / "out").exists()
    assert _main(monkeypatch, "demo", "--device", "tpu", "--out", str(tmp_path / "out")) == 2
    assert "key 'device'" in capsys.readouterr().err


def test_internal_error_prints_one_line_and_a_crash_log(monkeypatch, capsys, tmp_path):
    import applefair.report.build as build

    def boom(*_a, **_k):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(build, "write_reports", boom)
    monkeypatch.setenv("APPLEFAIR_LOG_DIR", str(tmp_path / "logs"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("command: demo\n")
    assert _main(monkeypatch, "report", str(tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("internal error: RuntimeError: something broke (details in ")
    assert err.count("\n") == 0 and "second line" not in err
    logs = list((tmp_path / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and logs[0].name in err
    text = logs[0].read_text()
    assert "Traceback" in text and "second line" in text and "report" in text
