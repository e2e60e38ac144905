"""`applefair train` as a function: data -> ERM-trained model folder (model.safetensors + model.yaml).

The folder is built in the hidden sibling `.NAME.resume.partial` (`applefair.engine.io.resumable_dir`)
with a checkpoint after every epoch; a killed run is continued with `resume=True`, and only a
finished run appears at `out` (without the checkpoint).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from pydantic import Field

from applefair._version import __version__
from applefair.data.formats import parse_key_values
from applefair.engine.config import Device, Settings
from applefair.engine.io import resumable_dir, write_csv, write_yaml
from applefair.engine.runinfo import run_info
from applefair.models.checkpoints import load_checkpoint
from applefair.models.registry import create_segmentor, save_model_dir

if TYPE_CHECKING:
    from applefair.training.erm import TrainConfig

log = logging.getLogger("applefair")


class TrainSettings(Settings):
    """Settings of `applefair train` (YAML keys for --config; command-line options override them)."""

    data: str | None = Field(None, description="Dataset path (manifest CSV or dataset folder).")
    format: str | None = Field(None, description="Dataset format; detected when omitted.")
    options: dict = Field(default_factory=dict, description="Reader options.")
    size: int | None = Field(None, ge=16, description="Resize every sample to size x size.")
    attribute: str | None = Field(None, description="Group column (labels validation rows only).")
    model: str = Field("", description="Zoo name (required, here or as --model).")
    tiny: bool = Field(False, description="The CPU-test size of the model.")
    args: dict = Field(default_factory=dict, description="Model constructor arguments.")
    checkpoint: str | None = Field(None, description="Initial weights (.safetensors, .pt, .pth).")
    epochs: int = Field(30, ge=0, description="Training epochs (0: only import the checkpoint).")
    batch_size: int = Field(16, ge=1)
    lr: float | None = Field(None, gt=0, description="Default 2e-3 (adamw) or 1e-2 (sgd).")
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    augment: str = Field("hflip,rotate,intensity", description="Comma list of hflip, vflip, rotate, intensity.")
    seed: int = Field(0, ge=0)
    device: Device = "auto"

    def train_config(self, device: str) -> TrainConfig:
        from applefair.data.augment import parse_augment
        from applefair.training.erm import TrainConfig

        parse_augment(self.augment)
        lr = self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 2e-3)
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=lr, weight_decay=self.weight_decay,
                           seed=self.seed, augment=self.augment, optimizer=self.optimizer, device=device)


def run_train(data: str | os.PathLike, model: str, out: str | os.PathLike, cfg: TrainConfig, *,
              tiny: bool = False, model_args: dict | None = None, checkpoint: str | os.PathLike | None = None,
              data_format: str | None = None, data_options: dict | None = None, size: int | None = None,
              attribute: str | None = None, overwrite: bool = False, quiet: bool = False,
              resume: bool = False) -> dict:
    """Train (or, with 0 epochs, just import a checkpoint into) a zoo model; write the model folder
    (model.safetensors, model.yaml, config.yaml, history.csv, run.log). `resume` continues the
    interrupted run of `out` from its last epoch's checkpoint (same settings required).

    Returns {"spec", "history", "best_val_dice", "seconds"}.
    """
    from applefair.data import GroupSpec, SegmentationDataset, load_dataset
    from applefair.engine.logs import run_logging
    from applefair.training.erm import CHECKPOINT, check_resume, resume_key, train_segmentor

    started = time.time()
    net, spec = create_segmentor(model, tiny=tiny, seed=cfg.seed, **(model_args or {}))
    if checkpoint is not None:
        load_checkpoint(net, spec.name, checkpoint)
    with resumable_dir(out, CHECKPOINT, overwrite=overwrite, resume=resume) as (stage, resuming):
        with run_logging(stage):
            config = {"command": "train", "argv": sys.argv, "applefair": __version__,
                      "torch": torch.__version__, "data": str(data) if data else None, "format": data_format,
                      "options": data_options or {}, "size": size, "attribute": attribute, "model": model,
                      "tiny": tiny, "model_args": spec.args, "checkpoint": str(checkpoint) if checkpoint else None,
                      "train": asdict(cfg), "run": run_info()}
            key = {k: config[k] for k in ("data", "format", "options", "size", "attribute", "model", "tiny",
                                          "model_args", "checkpoint")}
            if resuming:  # before anything of the interrupted run is rewritten
                check_resume(stage / CHECKPOINT, resume_key(cfg, key))
                log.info("resuming %s", stage)
            write_yaml(stage / "config.yaml", config)
            log.info("config %s", config)
            history: list[dict] = []
            if cfg.epochs > 0:
                frame = load_dataset(data, format=data_format, **(data_options or {}))
                groups = GroupSpec(attribute).fit(frame) if attribute else None
                split = {s: SegmentationDataset(frame, groups, s, size=size) for s in ("train", "val")}
                eval_groups = groups or _NoGroups()
                _, history = train_segmentor(net, split["train"], split["val"], eval_groups, cfg, quiet=quiet,
                                             run_dir=stage, resume=resuming, run_key=key)
                write_csv(stage / "history.csv", pd.DataFrame(history))
            net.to("cpu")
            save_model_dir(stage, net, spec)
        (stage / CHECKPOINT).unlink(missing_ok=True)  # the finished folder is a model folder, not a resume point
    best = max((h["val_dice"] for h in history), default=float("nan"))
    return {"spec": spec, "history": history, "best_val_dice": best, "seconds": time.time() - started}


class _NoGroups:
    """Stands in for a GroupSpec when no attribute is given: every sample is 'unknown'."""

    attribute = ""
    groups: list[str] = []
    num_groups = 0

    @staticmethod
    def name(_gid: int) -> str:
        return "unknown"


def parse_model_args(items: list[str] | None) -> dict:
    """CLI ``--arg key=value`` pairs -> constructor arguments (values parsed as YAML)."""
    return parse_key_values(items, "--arg", "variant=vit_b or channels=[16,32,64]")


def model_folder(path: str | os.PathLike) -> Path | None:
    """`path` if it is a model folder, else None."""
    p = Path(path)
    return p if (p / "model.yaml").is_file() else None
