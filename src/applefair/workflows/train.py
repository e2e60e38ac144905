"""`applefair train` as a function: data -> ERM-trained model folder (model.safetensors + model.yaml).

The folder is built in the hidden sibling `.NAME.resume.partial` (`applefair.engine.io.resumable_dir`)
with a checkpoint after every epoch; a killed run is continued with `resume=True`, and only a
finished run appears at `out` (without the checkpoint).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field
from torch import nn

from applefair.data import GroupSpec, SegmentationDataset, load_dataset
from applefair.data.formats import parse_key_values
from applefair.engine import distributed, runfolder
from applefair.engine.config import Device, Settings
from applefair.engine.device import resolve_device
from applefair.engine.runfolder import CHECKPOINT
from applefair.errors import InputError
from applefair.models.checkpoints import load_checkpoint
from applefair.models.registry import ModelSpec, create_segmentor, save_model_dir
from applefair.training.erm import TrainConfig, check_resume, resume_key, train_segmentor
from applefair.workflows._common import check_dims, logged, provenance

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

        parse_augment(self.augment)
        lr = self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 2e-3)
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=lr, weight_decay=self.weight_decay,
                           seed=self.seed, augment=self.augment, optimizer=self.optimizer, device=device)


@dataclass
class TrainedModel:
    """A segmentor trained (or imported) to be deployed, and how its training went."""

    net: nn.Module
    spec: ModelSpec
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best_val_dice(self) -> float:
        return max((h["val_dice"] for h in self.history), default=float("nan"))


def build_model(name: str, *, tiny: bool = False, args: dict | None = None, seed: int = 0,
                checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, ModelSpec]:
    """Zoo model `name`, initialised from `seed` alone, with `checkpoint`'s weights when given."""
    net, spec = create_segmentor(name, tiny=tiny, seed=seed, **(args or {}))
    if checkpoint is not None:
        load_checkpoint(net, spec.name, checkpoint)
    return net, spec


def train_deployed(net: nn.Module, spec: ModelSpec, split: dict[str, SegmentationDataset] | None, groups,
                   cfg: TrainConfig, *, quiet: bool = True, run_dir: str | os.PathLike | None = None,
                   resume: bool = False, run_key: dict | None = None) -> TrainedModel:
    """ERM training of `net` on `split` (train and val) for `cfg.epochs` epochs (none: `net` as it is);
    the step `train`, `demo`, `compare` and `bench` share."""
    started = time.perf_counter()
    history: list[dict] = []
    if cfg.epochs > 0:
        _, history = train_segmentor(net, split["train"], split["val"], groups, cfg, quiet=quiet, run_dir=run_dir,
                                     resume=resume, run_key=run_key)
    return TrainedModel(net, spec, history, time.perf_counter() - started)


def run_train(st: TrainSettings, out: str | os.PathLike, *, overwrite: bool = False, quiet: bool = False,
              resume: bool = False) -> TrainedModel:
    """Train (or, with 0 epochs, just import a checkpoint into) a zoo model; write the model folder
    (model.safetensors, model.yaml, config.yaml, history.csv, run.log). `resume` continues the
    interrupted run of `out` from its last epoch's checkpoint (same settings required)."""
    if not st.model:
        raise InputError("--model is required (a zoo name, see `applefair models list`)")
    if st.epochs > 0 and st.data is None:
        raise InputError("--data is required to train (or give --epochs 0 with --checkpoint)")
    if st.epochs == 0 and st.checkpoint is None:
        raise InputError("--epochs 0 only imports weights: give --checkpoint FILE")
    cfg = st.train_config(str(resolve_device(st.device)))
    net, spec = build_model(st.model, tiny=st.tiny, args=st.args, seed=cfg.seed, checkpoint=st.checkpoint)
    with distributed.rank_resumable(out, CHECKPOINT, overwrite=overwrite, resume=resume) as (stage, resuming):
        with logged(stage):
            config = provenance("train", data=st.data, format=st.format, options=st.options, size=st.size,
                                attribute=st.attribute, model=st.model, tiny=st.tiny, model_args=spec.args,
                                checkpoint=st.checkpoint, train=cfg.to_dict())
            key = {k: config[k] for k in ("data", "format", "options", "size", "attribute", "model", "tiny",
                                          "model_args", "checkpoint")}
            if resuming:  # before anything of the interrupted run is rewritten
                check_resume(stage / CHECKPOINT, resume_key(cfg, key))
                log.info("resuming %s", stage)
            runfolder.write_config(stage, config)
            log.info("config %s", config)
            split, groups = None, None
            if cfg.epochs > 0:
                frame = load_dataset(st.data, format=st.format, **st.options)
                labelled = GroupSpec(st.attribute).fit(frame) if st.attribute else None
                split = {s: SegmentationDataset(frame, labelled, s, size=st.size) for s in ("train", "val")}
                check_dims(spec, split["train"], st.data)
                groups = labelled or _NoGroups()
            trained = train_deployed(net, spec, split, groups, cfg, quiet=quiet, run_dir=stage, resume=resuming,
                                     run_key=key)
            if trained.history:
                runfolder.write_history(stage, trained.history)
            trained.net.to("cpu")
            save_model_dir(stage, trained.net, trained.spec)
        (stage / CHECKPOINT).unlink(missing_ok=True)  # the finished folder is a model folder, not a resume point
    return trained


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
