"""What every use case shares: the frozen-weights proof, the run's provenance, its log."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from applefair._version import __version__
from applefair.engine.io import folder_hash, state_dict_hash
from applefair.engine.logs import run_logging
from applefair.engine.runfolder import RUN_LOG
from applefair.engine.runinfo import run_info

log = logging.getLogger("applefair")


class FrozenCheck:
    """The proof that a use case left the deployed model unchanged: SHA-256 of its state dict (and of its
    model folder's files) taken before the work and again after it.

    `verify(*copies)` also checks copies of the deployed weights a method carries inside the model it
    returns (APPLE's patched model holds one); a change anywhere is a bug, raised as RuntimeError.
    """

    def __init__(self, net: nn.Module, folder: str | os.PathLike | None = None):
        self.net = net
        self.folder = None if folder is None else Path(folder)
        self.hash_before = state_dict_hash(net)
        self.folder_before = folder_hash(self.folder) if self.folder is not None else None

    def verify(self, *copies: nn.Module | None, **extra: object) -> dict:
        """The frozen_check.json record (`hash_before`, `hash_after`, `unchanged`, and `extra`)."""
        after = state_dict_hash(self.net)
        same = after == self.hash_before and all(state_dict_hash(c) == self.hash_before
                                                 for c in copies if c is not None)
        record: dict = {"hash_before": self.hash_before, "hash_after": after, "unchanged": same}
        if self.folder is not None:
            record.update(model_folder_sha256_before=self.folder_before,
                          model_folder_sha256_after=folder_hash(self.folder))
            record["unchanged"] = same and record["model_folder_sha256_before"] == record["model_folder_sha256_after"]
        if not record["unchanged"]:
            raise RuntimeError("the deployed model's weights changed during the run (SHA-256 check failed)")
        return {**record, **extra}


def provenance(command: str, **fields: object) -> dict:
    """The head of every config.yaml: command, command line, versions, and the run's settings."""
    return {"command": command, "argv": list(sys.argv), "applefair": __version__, "torch": str(torch.__version__),
            **fields, "run": run_info()}


@contextmanager
def logged(folder: str | os.PathLike) -> Iterator[Path]:
    """The run's INFO log in `folder/run.log` while the run lasts."""
    with run_logging(folder, RUN_LOG) as path:
        yield path


def check_dims(spec, dataset, source: object) -> None:
    """InputError when the model's spatial dimensions (`ModelSpec.spatial_dims`) differ from the data's (2-D
    images or 3-D volumes, `SegmentationDataset.spatial_dims`)."""
    from applefair.errors import InputError

    model_dims, data_dims = int(getattr(spec, "spatial_dims", 2)), int(getattr(dataset, "spatial_dims", 2))
    if len(dataset) and model_dims != data_dims:
        kind = {2: "2-D images", 3: "3-D volumes"}
        raise InputError(f"{source}: holds {kind.get(data_dims, data_dims)}, but model '{spec.name}' takes "
                         f"{kind.get(model_dims, model_dims)} (e.g. --model unet3d for volumes, spatial_dims=3)")
