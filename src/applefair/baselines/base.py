"""The one interface every mitigation method shares, and the fine-tuning loop most of them use.

A method starts from the deployed model's weights and gets the same budget as every other
(data, epochs, batch size, learning rate, augmentation, seed) and the same model-selection
rule, so that differences between methods come from the methods, not from the budget:

    best epoch on validation = highest ES-Dice (Harvard-FairSeg, sum form) among the epochs
    whose overall validation Dice is within `tolerance` of the starting model's; epoch 0 is
    the starting model itself (the rule APPLE's trainer uses).

`fit` never changes the network it is given (methods work on a copy) and returns a model
that predicts through `applefair.models.segment`.

Device and processes: a method runs where the network it is given lives (the caller moves it
there; every module a method creates follows it). Under torchrun, `finetune` trains the model
in DistributedDataParallel over the global batches of `applefair.engine.samplers.make_loader`, so
N processes fit the same model as one (within rounding); group-aware losses reduce their
per-group sums over the processes (see docs/distributed.md).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import ConfigDict, Field, create_model
from torch import nn
from torch.utils.data import DataLoader, Sampler

from applefair.data.augment import augment_batch
from applefair.data.groups import GroupSpec
from applefair.data.manifest import SegmentationDataset
from applefair.engine import distributed, samplers
from applefair.engine.config import Settings, validate_settings
from applefair.engine.device import module_device, to_device
from applefair.engine.progress import progress_bar
from applefair.engine.seeding import seed_everything
from applefair.metrics.evaluate import score
from applefair.metrics.frame import MetricFrame
from applefair.models.registry import ModelSpec
from applefair.training.selection import selection_score, within_tolerance

log = logging.getLogger("applefair")


class Budget(Settings):
    """What every method gets: the same epochs, batches, optimiser settings and selection rule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
    label: ClassVar[str] = "budget"

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = True
    seed: int = Field(0, ge=0)
    tolerance: float = 0.01  # selection: val Dice may fall at most this below the starting model's
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9

    @classmethod
    def from_dict(cls, d: Mapping | None, where: str = "budget") -> Budget:
        """From a config mapping (compare's `budget:`); errors name the key."""
        return validate_settings(dict(d or {}), cls, where)


@dataclass
class FitResult:
    """What a method returns.

    `trainable_params` counts the parameters of the returned model that training changed
    (discriminators or attribute heads used only during training are not counted); `frozen`
    says whether the method keeps the deployed weights inside the returned model unchanged, and
    `deployed` is that module (the use case proves it by hash); `latent_sites` are the sites (of
    `model`, or of the segmentor it holds as `.net`) whose outputs the decoder receives, for the
    leakage probes, or None where that is not one tensor (subgroup models). `extra` is JSON-able.
    """

    model: nn.Module
    trainable_params: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    frozen: bool = False
    deployed: nn.Module | None = None
    latent_sites: list[str] | None = None
    selected_epoch: int = 0
    extra: dict = field(default_factory=dict)


class Method(ABC):
    """A mitigation method. Subclasses set `name`, `summary` and `defaults` (their options)."""

    name: str = ""
    summary: str = ""
    defaults: dict = {}

    def options(self, given: Mapping | None) -> dict:
        """The method's options: `defaults` overridden by `given`, validated like every configuration
        (an unknown key or a value of another type than its default's is an InputError naming the key)."""
        return validate_settings(dict(given or {}), self.options_model(), f"method '{self.name}'").to_dict()

    @classmethod
    def options_model(cls) -> type[Settings]:
        """A Settings model of the method's options, typed by their defaults (a float option takes an int)."""
        fields = {k: (float if isinstance(v, float) else type(v), v) for k, v in cls.defaults.items()}
        return create_model(f"{cls.__name__}Options", __base__=Settings, **fields)

    @abstractmethod
    def fit(self, net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
            groups: GroupSpec, budget: Budget, options: Mapping | None = None, quiet: bool = False,
            run_dir: str | os.PathLike | None = None, resume: bool = False) -> FitResult:
        """Mitigate `net` (left unchanged) and return the model to deploy instead.

        `run_dir`: where a method that checkpoints (APPLE) writes its state after every epoch;
        `resume`: continue from it. Methods that do not checkpoint ignore both."""


def count_params(params: Iterable[nn.Parameter]) -> int:
    return int(sum(p.numel() for p in params))


def validate(model: nn.Module, val: SegmentationDataset, groups: GroupSpec) -> MetricFrame:
    return score(model, val, groups).frame()


def make_loader(data: SegmentationDataset, budget: Budget, gen: torch.Generator,
                sampler: Sampler | None = None) -> DataLoader:
    """Shuffled (or `sampler`-ordered) batches of `budget.batch_size`; under torchrun, this
    process's share of each global batch (`applefair.engine.samplers.make_loader`)."""
    drop = len(data) > budget.batch_size
    return samplers.make_loader(data, budget.batch_size, shuffle=True, generator=gen, drop_last=drop,
                                   sampler=sampler)


def finetune(model: nn.Module, trainable: nn.Module, train: SegmentationDataset, val: SegmentationDataset,
             groups: GroupSpec, budget: Budget, step: Callable[[dict, nn.Module], torch.Tensor], label: str,
             quiet: bool = False, sampler_fn: Callable[[torch.Generator], Sampler] | None = None,
             extra_params: Iterable[nn.Parameter] = (), train_modules: Iterable[nn.Module] = (),
             ) -> tuple[list[dict], int]:
    """The shared loop: AdamW (or SGD) on `trainable` (+ `extra_params`), `budget.epochs` epochs of
    `step(batch, forward)` losses, flips as augmentation, and the common selection rule;
    `trainable` ends at its best state.

    `model` is what is validated (it may wrap `trainable`); `forward` is the module a step calls
    for the forward pass (`segment(forward, batch)`): `model` itself, or under torchrun `model` in
    DistributedDataParallel (modules a step calls besides it, e.g. a discriminator, are wrapped by
    the method with `distributed.wrap`). Batches arrive on `model`'s device. `train_modules` are
    put in train mode each epoch besides `model`. Returns (history, selected epoch).
    """
    gen = seed_everything(budget.seed)
    dev = module_device(model)
    params = [p for p in trainable.parameters() if p.requires_grad] + list(extra_params)
    if budget.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=budget.lr, momentum=0.9, weight_decay=budget.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=budget.lr, weight_decay=budget.weight_decay)
    loader = make_loader(train, budget, gen, sampler_fn(gen) if sampler_fn else None)
    forward = distributed.wrap(model)  # DDP when world_size > 1, else `model` itself
    try:
        history, best_epoch, best_state = _epochs(model, forward, trainable, loader, val, groups, budget, step,
                                                  label, quiet, opt, gen, dev, train_modules)
    finally:
        distributed.unwrap(forward)
    trainable.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


def _epochs(model: nn.Module, forward: nn.Module, trainable: nn.Module, loader: DataLoader,
            val: SegmentationDataset, groups: GroupSpec, budget: Budget,
            step: Callable[[dict, nn.Module], torch.Tensor], label: str, quiet: bool,
            opt: torch.optim.Optimizer, gen: torch.Generator, dev: torch.device,
            train_modules: Iterable[nn.Module]) -> tuple[list[dict], int, dict]:
    train_modules = list(train_modules)
    start = validate(model, val, groups)
    best_score, best_epoch = selection_score(start), 0
    best_state = copy.deepcopy(trainable.state_dict())
    history = [{"epoch": 0, "val_dice": start.dice, "val_score": best_score}]
    with progress_bar(quiet or not distributed.is_main()) as bar:
        task = bar.add_task(label, total=budget.epochs, info="")
        for epoch in range(1, budget.epochs + 1):
            forward.train()
            for m in train_modules:
                m.train()
            total, seen = 0.0, 0
            for batch in loader:
                if budget.augment:  # on the CPU, where the generator lives (every rank draws the same flips)
                    x, y = augment_batch(batch["image"], batch["mask"], gen)
                    batch = {**batch, "image": x, "mask": y}
                batch = to_device(batch, dev)
                loss = step(batch, forward)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch["image"])
                seen += len(batch["image"])
            total, seen = distributed.all_reduce_sum(total), distributed.all_reduce_sum(float(seen))
            frame = validate(model, val, groups)
            row = {"epoch": epoch, "loss": total / max(seen, 1), "val_dice": frame.dice,
                   "val_score": selection_score(frame)}
            history.append(row)
            log.info("%s epoch %d %s", label, epoch, {k: round(v, 4) for k, v in row.items()})
            if within_tolerance(row["val_dice"], start.dice, budget.tolerance) and row["val_score"] > best_score:
                best_score, best_epoch = row["val_score"], epoch
                best_state = copy.deepcopy(trainable.state_dict())
            bar.update(task, advance=1, info=f"loss {row['loss']:.3f} val Dice {row['val_dice']:.3f}")
    return history, best_epoch, best_state


class Timer:
    """Wall time of a fit (`with Timer() as t: ...; t.seconds`)."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0


def per_sample_seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + BCE per sample, shape (B,): the loss that group-aware methods reweight.

    Its batch mean equals MONAI's DiceCELoss(sigmoid=True) used by ERM training.
    """
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True, reduction="none")(logits, target).reshape(len(logits), -1).mean(1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return dice + bce.flatten(1).mean(1)


def start_copy(net: nn.Module) -> nn.Module:
    """A copy of the deployed model to retrain (the caller's network is never touched).

    Parameters the architecture itself keeps frozen (e.g. the SAM backbone under SAMed's LoRA)
    stay frozen, so "fine-tune" means what the model's own training means; a network with no
    trainable parameter at all (frozen by the caller) is made trainable.
    """
    twin = copy.deepcopy(net)
    if not any(p.requires_grad for p in twin.parameters()):
        for p in twin.parameters():
            p.requires_grad_(True)
    return twin


def count_trainable(module: nn.Module) -> int:
    return count_params(p for p in module.parameters() if p.requires_grad)


def finetune_copy(net: nn.Module, spec: ModelSpec, train: SegmentationDataset, val: SegmentationDataset,
                  groups: GroupSpec, budget: Budget, step: Callable[[dict, nn.Module], torch.Tensor], label: str,
                  quiet: bool = False, sampler_fn: Callable[[torch.Generator], Sampler] | None = None) -> FitResult:
    """Retrain a whole copy of `net` with `finetune`: the fit that erm, resampling, groupdro and febs
    share (they differ only in the loss `step` and, for resampling, the sampler)."""
    model = start_copy(net)
    with Timer() as t:
        history, best = finetune(model, model, train, val, groups, budget, step, label, quiet, sampler_fn=sampler_fn)
    return FitResult(model=model, trainable_params=count_trainable(model), seconds=t.seconds, history=history,
                     frozen=False, latent_sites=[spec.site], selected_epoch=best)
