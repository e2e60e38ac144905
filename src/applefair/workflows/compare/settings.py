"""The `applefair compare` configuration: methods x segmentors x datasets x seeds.

    name: smoke
    seeds: [0, 1, 2]
    deploy: {epochs: 6}                    # ERM training of the model that is "deployed"
    budget: {epochs: 4, batch_size: 16}    # the mitigation budget, the same for every method
    datasets:
      - {name: nodules-sex, synthetic: {kind: nodules, bias: contrast, n: 240, size: 64}, groups: sex}
      - {name: vessels-age, synthetic: {kind: vessels, bias: contrast, n: 240, size: 64},
         groups: "age:0,60,inf"}
      - {name: mine, manifest: data/manifest.csv, groups: sex}   # path relative to this file
    segmentors: [{name: unet, tiny: true}]
    methods: [erm, resampling, {name: groupdro, options: {eta: 0.05}}, apple]

Synthetic data are generated once per dataset (their own `seed` key, default 0); the run
seeds vary the deployed model's training and every method's training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from applefair.engine.config import Settings, load_config
from applefair.errors import InputError


class DatasetSpec(Settings):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Label used in tables and folder names.")
    synthetic: dict[str, Any] | None = Field(None, description="Arguments of applefair.data.synthetic.generate.")
    manifest: str | None = Field(None, description="A manifest CSV (relative to the config file).")
    groups: str | dict[str, Any] = Field(description="Group spec: 'sex', 'age:0,60,inf' or a mapping.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.synthetic is None) == (self.manifest is None):
            raise ValueError(f"dataset '{self.name}': give exactly one of 'synthetic' or 'manifest'")
        return self


class SegmentorSpec(Settings):
    name: str = Field(description="Registry name (applefair.models.list_models()).")
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Label (default: name).")
    tiny: bool = Field(True, description="Use the registry's CPU-sized configuration.")
    args: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")

    @property
    def key(self) -> str:
        return self.label or self.name


class MethodSpec(Settings):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class DeploySpec(Settings):
    """ERM training of the deployed model (applefair.training.erm.TrainConfig, seed from the run)."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = True


class CompareSettings(Settings):
    name: str = "compare"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    budget: dict[str, Any] = Field(default_factory=dict, description="applefair.baselines.Budget fields.")
    bootstrap: int = Field(1000, ge=0, description="Paired bootstrap resamples for the marks against erm.")
    level: float = Field(0.95, gt=0, lt=1)
    leakage: bool = Field(True, description="Fit a fresh probe on the test latents of every cell.")
    datasets: list[DatasetSpec] = Field(min_length=1)
    segmentors: list[SegmentorSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, v: Any) -> Any:
        return [{"name": m} if isinstance(m, str) else m for m in (v or [])]

    @field_validator("segmentors", mode="before")
    @classmethod
    def _segmentor_names(cls, v: Any) -> Any:
        return [{"name": m} if isinstance(m, str) else m for m in (v or [])]

    @model_validator(mode="after")
    def _unique(self) -> CompareSettings:
        for what, keys in (("dataset", [d.name for d in self.datasets]),
                           ("segmentor", [s.key for s in self.segmentors]),
                           ("method", [m.name for m in self.methods])):
            dup = {k for k in keys if keys.count(k) > 1}
            if dup:
                raise ValueError(f"{what} '{sorted(dup)[0]}' appears twice (give segmentors a distinct 'label')")
        return self


def load_compare_settings(path: str | os.PathLike) -> tuple[CompareSettings, Path]:
    """The validated settings and the folder that relative manifest paths start from."""
    from applefair.baselines import get_method
    from applefair.baselines.base import Budget
    from applefair.models.registry import list_models

    settings = load_config(path, CompareSettings)
    Budget.from_dict(settings.budget, where=f"{path}: budget")
    for m in settings.methods:
        get_method(m.name).options(m.options)
    known = list_models()
    for s in settings.segmentors:
        if s.name not in known:
            raise InputError(f"{path}: segmentor '{s.name}' is not known (expected one of: {', '.join(known)})")
    return settings, Path(path).resolve().parent
