"""The data contract: manifests of (image, mask, split, attributes), groups, synthetic data."""

from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset, read_manifest
from applefair.data.synthetic import BIASES, generate

__all__ = ["BIASES", "GroupSpec", "SegmentationDataset", "generate", "read_manifest"]
