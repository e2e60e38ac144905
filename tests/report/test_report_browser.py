"""report.html opened the way a person would: in a real browser (headless Chromium).

Uses Debian's `chromium` package (the CI script installs it with `apt-get install -y chromium`);
skips, saying why, only where it is absent. Nothing is installed by the test itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else \
    (Path(shutil.which("chromium")) if shutil.which("chromium") else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (/usr/bin/chromium missing; "
                                                         "Debian: apt-get install -y chromium)")
WINDOW = (1200, 4000)


def open_headless(page: Path, tmp: Path) -> tuple[list[str], str, Path]:
    """(console messages, serialised DOM, screenshot path) of `page` in headless Chromium."""
    shot = tmp / "screenshot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines()
               if ":CONSOLE" in line or "Uncaught" in line or "Refused to" in line]
    return console, proc.stdout, shot


def _near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 20) -> int:
    return int((np.abs(img[..., :3].astype(int) - np.array(rgb)).max(-1) <= tol).sum())


def test_console_check_sees_errors(tmp_path):
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_function();</script></body></html>")
    console, _, _ = open_headless(bad, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console)


def test_report_renders_without_console_errors(tiny_run_report, tmp_path):
    root, _ = tiny_run_report
    console, dom, shot = open_headless(root / "report.html", tmp_path)
    assert console == []
    assert dom.count("<table") >= 5 and dom.count('src="data:image/') >= 4
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    non_white = (img < 245).any(-1).mean()
    assert non_white > 0.03, f"screenshot nearly blank ({non_white:.1%} non-white)"
    # the plots were decoded and painted: the plot palette's blue and red are on screen
    assert _near(img, (0x44, 0x77, 0xAA)) > 200 and _near(img, (0xEE, 0x66, 0x77)) > 200


def test_hostile_report_runs_no_script(tmp_path, hostile_run):
    from applefair.report import write_reports

    run = hostile_run(tmp_path / "run", "<script>console.error('pwned')</script>", ["<b>F</b>", "M"])
    write_reports(run)
    console, dom, _ = open_headless(run / "report.html", tmp_path)
    assert console == [] and "<script" not in dom and "<b>F</b>" not in dom
    assert "&lt;script&gt;console.error('pwned')&lt;/script&gt;" in dom
