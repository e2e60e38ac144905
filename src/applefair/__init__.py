"""applefair: post-hoc fairness for deployed medical image segmentors (APPLE)."""

from applefair._version import __version__

__all__ = ["__version__", "attach"]


def attach(model, patch_path):
    """Attach a fairness patch (`patch.safetensors`) to an unchanged deployed model."""
    from applefair.apple.patch import attach as _attach

    return _attach(model, patch_path)
