"""What `applefair bench` measures, and the targets it checks."""

from __future__ import annotations

from pydantic import Field, field_validator

from applefair.engine.config import Device, Settings

RETRAINING = ("resampling", "groupdro", "febs", "adversarial")
SECTIONS = ("mitigation", "inference", "dataset_size", "image_size", "evaluation")
TARGETS = {"mitigation_cost_ratio": 0.25, "mitigation_cost_ratio_aim": 0.10, "inference_latency_ratio": 1.10,
           "params_ratio": 0.05}


class BenchConfig(Settings):
    """Sizes of each measurement; `quick()` fits in about 3 minutes on 2 cores."""

    seed: int = 0
    n: int = 480  # images of the mitigation-cost data set (60% train)
    size: int = 96  # their side in pixels
    deploy_epochs: int = 6
    epochs: int = 4  # the same budget for APPLE and every retraining baseline
    batch_size: int = 16
    methods: tuple[str, ...] = RETRAINING
    latency_size: int = 128
    latency_repeats: int = 10
    sam_args: dict = Field(default_factory=lambda: {"variant": "vit_b", "img_size": 256})
    sam_tiny: bool = False
    dataset_sizes: tuple[int, ...] = (1000, 4000, 16000)
    image_sizes: tuple[int, ...] = (64, 128, 256)
    scaling_n: int = 512  # images per epoch in the image-size sweep
    eval_n: int = 1000
    tiny: bool = False  # tiny U-Nets in the scaling and evaluation sweeps (tests)
    caches: tuple[str, ...] = ("memory", "disk")  # latent-cache modes of the data-set-size sweep
    sections: tuple[str, ...] = SECTIONS  # what to measure (`--only`)
    device: str = "cpu"  # where every model runs ('cpu', 'cuda', 'cuda:N'; resolved by the command)

    @classmethod
    def quick(cls, seed: int = 0) -> BenchConfig:
        return cls(seed=seed, n=240, size=64, deploy_epochs=3, epochs=2, latency_size=96, latency_repeats=5,
                   sam_args={}, sam_tiny=True, dataset_sizes=(256, 512, 1024), image_sizes=(64, 128),
                   scaling_n=128, eval_n=256)


class BenchSettings(Settings):
    """Settings of `applefair bench` (YAML keys for --config)."""

    quick: bool = False
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    only: list[str] | None = None  # sections to measure (default: all)
    dataset_sizes: list[int] | None = None  # data-set sizes of the scaling rows (default 1k/4k/16k; quick smaller)

    @field_validator("only")
    @classmethod
    def _sections(cls, v: list[str] | None) -> list[str] | None:
        bad = sorted(set(v or ()) - set(SECTIONS))
        if bad:
            raise ValueError(f"unknown section(s) {', '.join(bad)} (expected some of {', '.join(SECTIONS)})")
        return v

    @field_validator("dataset_sizes")
    @classmethod
    def _sizes(cls, v: list[int] | None) -> list[int] | None:
        if v and min(v) < 2:
            raise ValueError("expected data-set sizes of at least 2 images")
        return v

    def bench_config(self, device: str) -> BenchConfig:
        """The measurement sizes: quick or full, with `--only` and `--sizes` applied; `device` resolved."""
        cfg = BenchConfig.quick(seed=self.seed) if self.quick else BenchConfig(seed=self.seed)
        cfg.device = device
        if self.only:
            cfg.sections = tuple(self.only)
        if self.dataset_sizes:
            cfg.dataset_sizes = tuple(self.dataset_sizes)
        return cfg
