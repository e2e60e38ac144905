"""applefair: post-hoc fairness for deployed medical image segmentors (APPLE)."""

from applefair._version import __version__

__all__ = ["__version__", "attach"]


def attach(model, patch_path, strict: bool = True):
    """Attach a fairness patch (`patch.safetensors`) to the unchanged deployed model it was fitted on
    (another model's weights are refused unless `strict=False`)."""
    from applefair.apple.patch import attach as _attach

    return _attach(model, patch_path, strict=strict)
