"""Shared fixtures: a tiny synthetic dataset written in the manifest contract."""

from __future__ import annotations

import os

import pytest

# one torch thread everywhere, whatever the shell exported: CPU kernels sum in an order that depends on the
# thread count, and the bit-for-bit tests (resume, --jobs) compare runs made in this process with runs made
# in subprocesses pinned to one thread
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """60 nodule images at 64 px (contrast bias), written once per test session."""
    from applefair.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny") / "data", n=60, size=64, bias="contrast", seed=3)


@pytest.fixture(scope="session")
def tiny_frame(tiny_manifest):
    from applefair.data.manifest import read_manifest

    return read_manifest(tiny_manifest)
