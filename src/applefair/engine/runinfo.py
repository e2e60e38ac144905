"""What every run folder records about how it was produced (for reproducibility)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the applefair source tree, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_info() -> dict:
    """Versions of applefair, torch, MONAI and Python, the git commit and the command line."""
    import monai
    import torch

    from applefair._version import __version__

    return {"applefair": __version__, "torch": str(torch.__version__), "monai": monai.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "git_commit": git_commit(),
            "argv": list(sys.argv)}
