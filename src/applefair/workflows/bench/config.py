"""What `applefair bench` measures, and the targets it checks."""

from __future__ import annotations

from pydantic import Field, field_validator

from applefair.engine.config import Device, Settings

RETRAINING = ("resampling", "groupdro", "febs", "adversarial")
SECTIONS = ("mitigation", "inference", "dataset_size", "image_size", "evaluation", "realistic", "cache_memory",
            "cache_dtype")
QUICK_SECTIONS = ("mitigation", "inference", "dataset_size", "image_size", "evaluation")  # --quick: ~3 minutes
TARGETS = {"mitigation_cost_ratio": 0.25, "mitigation_cost_ratio_aim": 0.10, "inference_latency_ratio": 1.10,
           "params_ratio": 0.05}
# realistic presets (per model): measured at the bench's epochs, and derived at 30 epochs
REALISTIC_TARGETS = {"cost_ratio": 0.25, "cost_ratio_30_derived": 0.10, "latency_ratio_b1": 1.10,
                     "latency_ratio_b16": 1.10, "params_ratio": 0.05}


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
    latency_repeats: int = 10  # the least number of interleaved rounds per latency
    latency_seconds: float = 120.0  # the most seconds of rounds per model and batch size
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
    threads: int | None = 1  # torch's intra-op threads for every measurement (None: leave torch's default)
    # realistic: deployment-size presets on the CPU (`--only realistic`; not part of --quick)
    realistic_models: tuple[str, ...] = ("sam_vit_b_256", "unet_large")
    realistic_size: int = 256  # input side at most (unet_large's own is 512)
    realistic_n: int = 32  # images (half train, a quarter val, a quarter test)
    realistic_epochs: int = 2  # >= 2: the epoch clock needs a later epoch
    realistic_batch_size: int = 8
    realistic_repeats: int = 3  # interleaved rounds of every method
    realistic_latency_seconds: float = 600.0
    realistic_tiny: bool = False  # tiny configurations of the presets at 64 px (tests)
    # cache_memory: peak memory vs data-set size of synthetic latents through the latent cache's stores
    cache_sizes: tuple[int, ...] = (500, 1000, 2000, 4000)
    cache_latent: tuple[int, int, int] = (256, 16, 16)  # sam_vit_b_256's image embedding
    # cache_dtype: APPLE's selected patch with a half-precision cache vs fp32 (test Dice and gap)
    dtype_seeds: tuple[int, ...] = (0, 1, 2)
    dtype_n: int = 480
    dtype_epochs: int = 20

    @classmethod
    def quick(cls, seed: int = 0) -> BenchConfig:
        return cls(seed=seed, n=240, size=64, deploy_epochs=3, epochs=2, latency_size=96, latency_repeats=5,
                   latency_seconds=10.0, sam_args={}, sam_tiny=True, dataset_sizes=(256, 512, 1024),
                   image_sizes=(64, 128), scaling_n=128, eval_n=256, sections=QUICK_SECTIONS)


class BenchSettings(Settings):
    """Settings of `applefair bench` (YAML keys for --config)."""

    quick: bool = False
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    only: list[str] | None = None  # sections to measure (default: all)
    dataset_sizes: list[int] | None = None  # data-set sizes of the scaling rows (default 1k/4k/16k; quick smaller)
    threads: int | None = Field(1, ge=1)  # torch threads for every measurement (None: torch's default)
    # the realistic section's presets, epochs and interleaved rounds (default: BenchConfig's)
    realistic_models: list[str] | None = None
    realistic_epochs: int | None = Field(None, ge=2)
    realistic_repeats: int | None = Field(None, ge=1)
    realistic_latency_seconds: float | None = Field(None, gt=0)  # time limit per preset and batch size

    @field_validator("only")
    @classmethod
    def _sections(cls, v: list[str] | None) -> list[str] | None:
        bad = sorted(set(v or ()) - set(SECTIONS))
        if bad:
            raise ValueError(f"unknown section(s) {', '.join(bad)} (expected some of {', '.join(SECTIONS)})")
        return v

    @field_validator("realistic_models")
    @classmethod
    def _presets(cls, v: list[str] | None) -> list[str] | None:
        from applefair.models.registry import list_presets

        bad = sorted(set(v or ()) - set(list_presets()))
        if bad:
            raise ValueError(f"unknown preset(s) {', '.join(bad)} (expected some of {', '.join(list_presets())})")
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
        cfg.threads = self.threads
        if self.only:
            cfg.sections = tuple(self.only)
        if self.dataset_sizes:
            cfg.dataset_sizes = tuple(self.dataset_sizes)
        if self.realistic_models:
            cfg.realistic_models = tuple(self.realistic_models)
        for key in ("realistic_epochs", "realistic_repeats", "realistic_latency_seconds"):
            if getattr(self, key) is not None:
                setattr(cfg, key, getattr(self, key))
        return cfg
