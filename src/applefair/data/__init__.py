"""The data contract: manifests of (image, mask, split, attributes), groups, readers, synthetic data."""

from applefair.data.formats import READERS, detect_format, load_dataset
from applefair.data.groups import GroupSpec, SmallGroupWarning
from applefair.data.loaders import LoadOptions
from applefair.data.manifest import SegmentationDataset, assign_splits, read_manifest
from applefair.data.synthetic import BIASES, KINDS, generate
from applefair.data.validate import validate_samples
from applefair.data.writers import save_predictions

__all__ = ["BIASES", "KINDS", "READERS", "GroupSpec", "LoadOptions", "SegmentationDataset", "SmallGroupWarning",
           "assign_splits", "detect_format", "generate", "load_dataset", "read_manifest", "save_predictions",
           "validate_samples"]
