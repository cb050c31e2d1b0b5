"""Typed benchmark settings: the full run, the ``--quick`` preset, and ``--set`` overrides.

The full settings are what the README's Performance table was measured with; ``quick`` shrinks
every section to finish in under 3 minutes on the 2-core CPU (fewer repeats and steps, a
train-per-class subset, no torch.compile, a 12 CPU-second time-to-accuracy budget). Any field can be
overridden from the command line (``--set repeats=2``), validated like recipe fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cnnbench.errors import CnnbenchError
from cnnbench.train.config import apply_overrides, build_config

VARIANTS = ("fp32", "bf16", "bf16_cl", "bf16_cl_compile", "bf16_cl_torch_bn", "bf16_cl_torch_pool", "bf16_cl_torch_optim",
            "bf16_cl_torch_conv_grad")
DEFAULT_VARIANTS = ("fp32", "bf16", "bf16_cl", "bf16_cl_compile")


@dataclass
class BenchSettings:
    """Sizes and repeat counts for every benchmark section."""

    data: str | None = None
    """Tiny ImageNet archive, or a folder holding it; default $CNNBENCH_DATA."""
    repeats: int = 5
    """Timed runs per measurement (the median and spread are over these)."""
    batch_size: int = 128
    """Images per step for every path and model (the baseline uses the same)."""
    seed: int = 0
    """Seeds data order, augmentation and model initialisation."""
    data_per_class: int | None = None
    """Data path section: train images per class (None: all of the archive, 80 for train80)."""
    data_workers: int = 2
    """DataLoader workers of the reference path (b); the issue fixes it at 2 on this 2-core CPU."""
    models: list[str] = field(default_factory=lambda: ["resnet18", "vgg_like", "densenet121", "squeezenet1_1"])
    """Models of the training-throughput section: registered names, each optionally with builder
    options as NAME:KEY=VALUE[,KEY=VALUE] (e.g. resnet18:stem=small; values parsed as YAML)."""
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    """cnnbench variants timed against the plain baseline: fp32, bf16, bf16_cl (+channels_last), bf16_cl_compile (+torch.compile); bf16_cl_torch_bn, bf16_cl_torch_pool, bf16_cl_torch_optim and bf16_cl_torch_conv_grad (bf16_cl with torch's batch norm, max pool, SGD step and autocast's weight casts, or without the AMX convolution kernels (oneDNN's weight gradients, im2col + matmul for small maps), instead of cnnbench's kernels, ablations) on request."""
    compile_models: list[str] = field(default_factory=lambda: ["resnet18"])
    """Models for which the torch.compile variant is measured (compiling a training graph takes minutes on 2 cores)."""
    input_size: int = 64
    """Image side for the throughput and Keras sections."""
    steps: int = 6
    """Timed optimiser steps per throughput run."""
    warmup_steps: int = 2
    """Untimed steps before timing (oneDNN primitive creation, compile, allocator growth)."""
    heavy_step_fraction: float = 0.5
    """Steps and repeats are scaled by this for models above 2 GFLOP per training image (DenseNet-121 takes ~10x ResNet-18's time per step)."""
    keras_images: int = 2000
    """Training images per Keras/plain-loop epoch of the VGG-like comparison."""
    keras_epochs: int = 3
    """Keras epochs timed (the first is warm-up and not counted)."""
    peak_sizes: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    """Square matmul sizes tried for the fp32 and bf16 peaks."""
    memory_steps: int = 6
    """Optimiser steps the memory section's training child runs (warm-up included) before it reads its peak RSS."""
    scaling_per_class: list[int] = field(default_factory=lambda: [20, 40, 80])
    """Train-set sizes (images per class) of the scaling sweep, at 64 px."""
    scaling_sizes: list[int] = field(default_factory=lambda: [32, 64, 128])
    """Input sizes of the scaling sweep."""
    scaling_sizes_per_class: int = 20
    """Images per class used for the input-size sweep."""
    scaling_model: str = "resnet18"
    """Model trained in the scaling sweep (bf16 + channels_last)."""
    scaling_repeats: int = 3
    """Epochs timed per point of the scaling sweep."""
    linearity_tolerance: float = 0.15
    """A log-log slope within 1 +- this is called linear."""
    tta_recipes: list[str] = field(default_factory=lambda: [
        "modern=skoltech22_cnns/modern", "reports_best=skoltech22_cnns/resnet18_lr1e-3"])
    """Recipes raced in the time-to-accuracy section, ours first and the reference last: label=REF with REF a recipe YAML path, or STUDY/EXPERIMENT (a study's recipe)."""
    tta_fit_epochs: list[str] = field(default_factory=lambda: ["modern"])
    """Labels whose epoch count is planned to end with each budget (the others run as published)."""
    tta_budgets: list[float] = field(default_factory=lambda: [10.0, 30.0])
    """Training budgets in CPU-minutes (process CPU time, all threads summed; evaluation excluded)."""
    tta_target: float = 0.2
    """Fixed val top-1 (fraction) whose time-to-reach is reported for each recipe."""
    tta_overrides: list[str] = field(default_factory=list)
    """``--set``-style overrides applied to every raced recipe (e.g. data.train_per_class=20)."""
    tta_val_limit: int | None = None
    """Evaluate on the first N val images only (None: all 10,000)."""
    tta_threads: int | None = None
    """torch threads for the race (None: torch's default). 1 makes CPU time pure work on a busy
    machine: idle OpenMP threads spin while waiting for a descheduled peer, and that spinning
    counts as CPU time without training anything."""

    def __post_init__(self) -> None:
        for name in ("repeats", "batch_size", "steps", "keras_images", "keras_epochs", "scaling_repeats", "input_size",
                     "memory_steps", "scaling_sizes_per_class"):
            if getattr(self, name) < 1:
                raise CnnbenchError(f"bench.{name}: expected a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "data_workers"):
            if getattr(self, name) < 0:
                raise CnnbenchError(f"bench.{name}: expected 0 or more, got {getattr(self, name)!r}")
        for name in ("data_per_class", "tta_val_limit", "tta_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CnnbenchError(f"bench.{name}: expected a positive integer, got {getattr(self, name)!r}")
        for name in ("peak_sizes", "scaling_per_class", "scaling_sizes"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise CnnbenchError(f"bench.{name}: expected positive integers, got {getattr(self, name)!r}")
        if not self.tta_recipes:
            raise CnnbenchError("bench.tta_recipes: expected at least one recipe (the last is the reference)")
        if not 0 < self.linearity_tolerance < 1:
            raise CnnbenchError(f"bench.linearity_tolerance: expected a fraction in (0, 1), got {self.linearity_tolerance!r}")
        for spec in self.models:
            model_spec(spec)  # a malformed NAME:KEY=VALUE is an error before anything runs
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise CnnbenchError(f"bench.variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
        if self.keras_epochs < 2:
            raise CnnbenchError("bench.keras_epochs: expected at least 2 (the first epoch is warm-up)")
        if len(set(self.scaling_per_class)) < 2 or len(set(self.scaling_sizes)) < 2:
            raise CnnbenchError("bench.scaling_per_class / scaling_sizes: expected at least two different values each")
        if not 0 < self.tta_target < 1:
            raise CnnbenchError(f"bench.tta_target: expected a top-1 fraction in (0, 1), got {self.tta_target!r}")
        if not self.tta_budgets or min(self.tta_budgets) <= 0:
            raise CnnbenchError(f"bench.tta_budgets: expected positive CPU-minutes, got {self.tta_budgets!r}")
        if not 0 < self.heavy_step_fraction <= 1:
            raise CnnbenchError(f"bench.heavy_step_fraction: expected a fraction in (0, 1], got {self.heavy_step_fraction!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --quick: every section in under 3 minutes here. Fewer repeats and steps, ResNet-18 only,
# no torch.compile (its first compile alone takes minutes on 2 cores), small subsets.
QUICK = {
    "repeats": 3,
    "data_per_class": 10,
    "models": ["resnet18"],
    "variants": ["fp32", "bf16_cl"],
    "steps": 2,
    "warmup_steps": 1,
    "batch_size": 64,
    "keras_images": 256,
    "keras_epochs": 2,
    "peak_sizes": [1024, 2048],
    "memory_steps": 2,
    "scaling_per_class": [2, 4],
    "scaling_sizes": [32, 64],
    "scaling_sizes_per_class": 2,
    "scaling_repeats": 1,
    "tta_recipes": ["modern=skoltech22_cnns/modern", "reports_best=skoltech22_cnns/resnet18_lr1e-3"],
    "tta_budgets": [0.2],
    "tta_overrides": ["data.train_per_class=10", "train.batch_size=64"],
    "tta_val_limit": 500,
    "tta_target": 0.02,
}


def build_settings(quick: bool = False, overrides: list[str] | None = None) -> BenchSettings:
    """The full or quick settings with ``key=value`` overrides applied (YAML-typed values)."""
    values = dict(QUICK) if quick else {}
    apply_overrides(values, overrides or [])
    return build_config(BenchSettings, values, "bench")


def model_spec(spec: str) -> tuple[str, dict]:
    """``"resnet18:stem=small"`` -> ``("resnet18", {"stem": "small"})``; a bare name has no options."""
    from cnnbench.models.registry import parse_options

    name, _, raw = spec.partition(":")
    if not name.strip():
        raise CnnbenchError(f"bench.models {spec!r}: expected a model name, optionally NAME:KEY=VALUE[,KEY=VALUE]")
    return name.strip(), parse_options([part for part in raw.split(",") if part.strip()], f"bench.models {spec!r}:")
