"""ERM training of the segmentor that will be 'deployed' (Dice + CE, best on validation).

Optimiser AdamW (default) or SGD with Nesterov momentum (nnU-Net's choice), both with polynomial
learning-rate decay; only parameters with requires_grad train (SAMed keeps its image encoder
frozen, SAM its prompt encoder). Augmentation uses MONAI's random transforms, per sample.
With a run folder, the whole training state is checkpointed after every epoch
(`applefair.engine.trainstate`), and `resume` continues from it to the same final weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import ClassVar, Literal

import torch
from monai.losses import DiceCELoss
from pydantic import Field
from torch import nn

from applefair.data.augment import apply_augmenter, augment_batch, parse_augment, sample_augmenter
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed, samplers
from applefair.engine.config import Settings
from applefair.engine.device import resolve_device
from applefair.engine.precision import Precision
from applefair.engine.progress import progress_bar
from applefair.engine.runfolder import CHECKPOINT
from applefair.engine.seeding import seed_everything
from applefair.engine.trainstate import load_state, numpy_streams, read_header, save_state
from applefair.errors import InputError
from applefair.metrics.evaluate import predict_scores
from applefair.models.forward import segment

log = logging.getLogger("applefair")

FORMAT = "applefair-erm-checkpoint/1"
OPTIMIZERS = ("adamw", "sgd")


class TrainConfig(Settings):
    """The ERM trainer's settings (`applefair train` builds them from its own; compare from `deploy:`)."""

    label: ClassVar[str] = "train config"

    epochs: int = Field(30, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0)
    augment: bool | str = True  # True: random horizontal flips per batch; or a comma list of AUGMENTATIONS
    optimizer: Literal[OPTIMIZERS] = "adamw"  # sgd: momentum 0.99, Nesterov
    momentum: float = Field(0.99, ge=0)
    poly_power: float = Field(0.9, ge=0)
    device: str = "cpu"


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if not params:
        raise InputError("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_segmentor(net: nn.Module, train: SegmentationDataset, val: SegmentationDataset, groups: GroupSpec,
                    cfg: TrainConfig, quiet: bool = False, run_dir: str | os.PathLike | None = None,
                    resume: bool = False, run_key: dict | None = None) -> tuple[nn.Module, list[dict]]:
    """Train `net` in place by ERM; returns the best-on-validation-Dice weights and the history.

    With `run_dir`, `run_dir/checkpoint.safetensors` is rewritten (atomically) after every epoch;
    `resume` continues from it. `run_key` (JSON-able) identifies the run's settings: resuming a
    checkpoint written under another key is an InputError naming the first setting that differs.
    """
    gen = seed_everything(cfg.seed)
    ops = parse_augment(cfg.augment)
    aug = sample_augmenter(tuple(o for o in ops if o != "batch_hflip"), cfg.seed)
    if len(train) == 0:
        raise InputError("the training split is empty")
    if len(val) == 0:
        raise InputError("the validation split is empty (best-on-validation selection needs split=val rows)")
    device = resolve_device(cfg.device)  # under torchrun: this process's own GPU
    net.to(device)
    # one process: the plain shuffled loader; under torchrun: this rank's share of each global batch
    loader = samplers.make_loader(train, cfg.batch_size, shuffle=True, generator=gen,
                                     drop_last=len(train) > cfg.batch_size)
    model = distributed.wrap(net)  # DDP when world_size > 1, else `net` itself
    # mixed precision where the device has it (bf16/fp16 on CUDA); fp32 on the CPU, unchanged
    amp = Precision.resolve(getattr(cfg, "precision", "auto"), device)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = make_optimizer([p for p in net.parameters() if p.requires_grad], cfg)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max(1, cfg.epochs * len(loader)),
                                                  power=cfg.poly_power)
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    key = resume_key(cfg, run_key)
    state = {"modules": {"net": net}, "optimizers": {"opt": opt}, "generator": gen, "streams": numpy_streams(aug),
             "schedulers": {"sched": sched, **({"scaler": amp.scaler} if amp.scaler is not None else {})}}
    best, best_state, history, start = -1.0, copy.deepcopy(net.state_dict()), [], 0
    if resume and ckpt is not None and ckpt.is_file():
        check_resume(ckpt, key)
        meta, extra = load_state(ckpt, fmt=FORMAT, what="an ERM training checkpoint", **state)
        best, history, start = float(meta["best"]), meta["history"], int(meta["epoch"])
        best_state = {k: v.to(device) for k, v in extra["best"].items()}
        log.info("resuming ERM training after epoch %d of %d", start, cfg.epochs)
    with progress_bar(quiet) as bar:
        task = bar.add_task("train deployed (ERM)", total=cfg.epochs, info="", completed=start)
        for epoch in range(start, cfg.epochs):
            net.train()
            total = 0.0
            for batch in loader:
                x, y = batch["image"], batch["mask"]
                if "batch_hflip" in ops:
                    x, y = augment_batch(x, y, gen)
                x, y = apply_augmenter(aug, x, y)
                x, y = x.to(device), y.to(device)
                with amp.autocast():
                    loss = loss_fn(segment(model, {**batch, "image": x, "mask": y}), y)
                opt.zero_grad(set_to_none=True)
                amp.backward_step(loss, opt)  # loss.backward(); opt.step() (through a GradScaler for fp16)
                sched.step()
                total += float(loss.detach()) * len(x)
            total = distributed.all_reduce_sum(total)  # every rank's share of the epoch loss
            val_dice = float(predict_scores(net, val, groups, device=str(device))["dice"].mean())
            history.append({"epoch": epoch + 1, "loss": total / len(train), "val_dice": val_dice,
                            "lr": opt.param_groups[0]["lr"]})
            log.info("erm epoch %d loss %.4f val_dice %.4f", epoch + 1, total / len(train), val_dice)
            if val_dice > best:
                best, best_state = val_dice, copy.deepcopy(net.state_dict())
            if ckpt is not None and distributed.is_main():  # ranks hold the same state; others resume from a copy
                save_state(ckpt, fmt=FORMAT, states={"best": best_state}, **state,
                           meta={"epoch": epoch + 1, "best": best, "history": history, "config": key})
            bar.update(task, advance=1, info=f"loss {total / len(train):.3f} val Dice {val_dice:.3f}")
    net.load_state_dict(best_state)
    distributed.unwrap(model)
    return net.eval(), history


def resume_key(cfg: TrainConfig, run_key: dict | None = None) -> dict:
    """The settings a checkpoint must share with the run that resumes it (all but the device)."""
    return _plain({"train": {k: v for k, v in cfg.model_dump().items() if k != "device"}, **(run_key or {})})


def _plain(obj):
    """`obj` as it reads back from JSON (tuples -> lists, paths -> text), so settings compare equal."""
    return json.loads(json.dumps(obj, default=str))


def check_resume(ckpt: Path, key: dict) -> None:
    """InputError naming the first setting that differs from the run that wrote `ckpt`."""
    header = read_header(ckpt)
    if header.get("format") != FORMAT:
        raise InputError(f"{ckpt}: not an ERM training checkpoint (expected format '{FORMAT}' in its header)")
    old = json.loads(header.get("meta", "{}")).get("config", {})
    if old == key:
        return
    flat_old, flat_new = _flatten(old), _flatten(key)
    name = next((k for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k)), "config")
    raise InputError(f"{ckpt}: cannot resume: the interrupted run had {name}={flat_old.get(name)!r}, this one "
                     f"{flat_new.get(name)!r} (resume with the same options, or use --overwrite to start again)")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
