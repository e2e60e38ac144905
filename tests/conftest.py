"""Shared fixtures: a tiny synthetic dataset written in the manifest contract."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """60 nodule images at 64 px (contrast bias), written once per test session."""
    from applefair.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny") / "data", n=60, size=64, bias="contrast", seed=3)


@pytest.fixture(scope="session")
def tiny_frame(tiny_manifest):
    from applefair.data.manifest import read_manifest

    return read_manifest(tiny_manifest)
