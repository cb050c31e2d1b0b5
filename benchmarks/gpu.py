"""The GPU table: cnnbench's engine with Tiny ImageNet held on the GPU as uint8, augmented there.

Run on a CUDA machine (never in CI):

    python benchmarks/gpu.py --data ../shared/datasets --out gpu.json

It measures, in one process:
  1. the GPU's fp32 and bf16 matmul peaks (torch.mm, best of a few sizes);
  2. training images/s per model for the plain loop (ImageFolder + PIL + DataLoader(2 workers),
     fp32, batches copied to the GPU) and cnnbench's engine with the whole train split on the
     GPU as one uint8 tensor (``DeviceResidentLoader``), batch augmentation on the GPU, and
     fp32 / bf16 / + channels_last / + torch.compile; FLOP utilisation against the measured
     bf16 peak (target: 40% for ResNet-18 at 64 px);
  3. the wall time cnnbench's ``modern`` recipe needs to reach 30% val top-1 on train80
     (training time only: evaluation after each epoch is excluded, and the run stops at the
     first evaluation at or above the target).

Smoke mode on a CPU (what tests/bench runs): ``python benchmarks/gpu.py --device cpu --tiny
--data PATH``: the same code on a few images, a few steps, a 1% target.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import torch

from cnnbench.bench import measure_matmul_peak, training_flops_per_image, utilisation
from cnnbench.bench.device_data import hold_on_device
from cnnbench.bench.engine_runs import (EngineStepper, build_recipe_engine, load_recipe_dataset, throughput_recipe,
                                        train_within_budget)
from cnnbench.bench.results import SectionResult, Target, markdown_table, write_json
from cnnbench.bench.stats import ratio
from cnnbench.bench.throughput import (BASELINE_LABEL, VARIANTS, PlainStepper, create_seeded_model, interleaved_rates,
                                       plain_train_step)
from cnnbench.bench.time_to_accuracy import race_recipe, resolve_recipe_ref
from cnnbench.errors import CnnbenchError

GPU_MFU_TARGET = 40.0  # issue 7: at least 40% of the GPU's bf16 matmul peak for ResNet-18 at 64 px


@dataclass
class GpuSettings:
    """Sizes of the GPU run; ``tiny()`` shrinks them for the CPU smoke test."""

    batch_size: int = 512
    steps: int = 20
    repeats: int = 5
    warmup_steps: int = 5
    per_class: int | None = None
    models: list[str] = field(default_factory=lambda: ["resnet18", "vgg_like", "densenet121", "squeezenet1_1"])
    variants: list[str] = field(default_factory=lambda: ["fp32", "bf16", "bf16_cl", "bf16_cl_compile"])
    peak_sizes: tuple[int, ...] = (4096, 8192)
    target: float = 0.30
    max_minutes: float = 30.0
    recipe: str = "modern=skoltech22_cnns/modern"
    recipe_overrides: list[str] = field(default_factory=lambda: ["train.epochs=40", "train.batch_size=512",
                                                                 "optim.lr=0.4"])

    @classmethod
    def tiny(cls) -> "GpuSettings":
        return cls(batch_size=8, steps=2, repeats=1, warmup_steps=1, per_class=2, models=["resnet18"],
                   variants=["fp32", "bf16_cl"], peak_sizes=(128,), target=0.01, max_minutes=0.05,
                   recipe_overrides=["train.epochs=1", "train.batch_size=8", "model.options={}", "train.tta=none"])


def exact_fp32(device: torch.device) -> None:
    """On CUDA, fp32 matmuls and convolutions stay fp32 (no TF32), so the fp32 rows and the fp32
    peak measure the same arithmetic: cuDNN convolutions default to TF32 even with matmuls off."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def engine_stepper(model: str, variant_name: str, s: GpuSettings, ds, data: str | None, device: torch.device):
    """cnnbench's engine for ``model`` / ``variant`` with the split held on ``device``."""
    variant = VARIANTS[variant_name]
    recipe = throughput_recipe(model, s.batch_size, 64, "bf16" if variant.bf16 else "fp32", variant.channels_last,
                               variant.compile, data, s.per_class)
    recipe.train.device = str(device)
    engine = build_recipe_engine(recipe, ds, device=str(device))
    hold_on_device(engine, ds, device)
    return EngineStepper(engine, synchronize=synchronizer(device))


def baseline_stepper(model_name: str, s: GpuSettings, ds, data: str | None, device: torch.device, scratch):
    """The plain loop on ``device``: DataLoader(2 workers) batches copied over at each step."""
    from cnnbench.bench import reference_data

    train_dir = reference_data.extract_train_tree(reference_data.locate_archive(data), scratch, per_class=s.per_class)
    loader = reference_data.imagefolder_loader(train_dir, s.batch_size, list(ds.stats["channel_mean"]),
                                               list(ds.stats["channel_std"]), num_workers=2)
    model = create_seeded_model(model_name, ds.num_classes, 64, 0).to(device)
    return PlainStepper(plain_train_step(model), loader, synchronize=synchronizer(device),
                        to_device=lambda x, y: (x.to(device, non_blocking=True), y.to(device, non_blocking=True)))


def throughput_table(s: GpuSettings, ds, data, device, peaks: dict, scratch, log) -> SectionResult:
    rows = []
    for model_name in s.models:
        flops = training_flops_per_image(create_seeded_model(model_name, ds.num_classes, 64, 0), 64)
        steppers = {BASELINE_LABEL: baseline_stepper(model_name, s, ds, data, device, scratch)}
        warmup = {BASELINE_LABEL: s.warmup_steps}
        for name in s.variants:
            label = VARIANTS[name].label + ", data on the GPU"
            steppers[label] = engine_stepper(model_name, name, s, ds, data, device)
            warmup[label] = s.warmup_steps + (3 if VARIANTS[name].compile else 0)
        rates = interleaved_rates(steppers, s.steps, s.repeats, warmup, s.batch_size,
                                  log=lambda m: log(f"gpu: {model_name}: {m}"))
        base = rates[BASELINE_LABEL]
        for label, rate in rates.items():
            rows.append({"model": model_name, "path": label, "images_per_s": rate, "speedup": ratio(rate, base),
                         "mfu_bf16_pct": 100 * utilisation(rate.median, flops, peaks["bf16"])})
    resnet = [r for r in rows if r["model"] == "resnet18" and r["path"] != BASELINE_LABEL]
    targets = [Target("ResNet-18 64 px bf16 FLOP utilisation on the GPU", GPU_MFU_TARGET,
                      max(r["mfu_bf16_pct"] for r in resnet), unit="%")] if resnet else []
    return SectionResult(
        title=f"GPU training throughput at 64 px, batch {s.batch_size} (images/s, median [min-max])",
        rows=rows, targets=targets,
        columns=[("model", "model"), ("path", "path"), ("images_per_s", "images/s"), ("speedup", "x plain"),
                 ("mfu_bf16_pct", "% bf16 peak")],
        notes=[f"{s.steps} timed steps x {s.repeats} rounds (paths taking turns) after {s.warmup_steps} warm-up "
               "steps (compile: 3 more); the device is synchronised around every timed window; utilisation uses the "
               "measured bf16 matmul peak."])


def time_to_target(s: GpuSettings, data, device, log) -> SectionResult:
    """Train the recipe with the data on the GPU until val top-1 reaches the target."""
    entry = resolve_recipe_ref(s.recipe)
    recipe = race_recipe(entry, s.recipe_overrides + [f"train.device={device}"]
                         + ([f"data.train_per_class={s.per_class}"] if s.per_class else []), data)
    ds = load_recipe_dataset(recipe)
    engine = build_recipe_engine(recipe, ds, device=str(device))
    hold_on_device(engine, ds, device)
    sync = synchronizer(device)

    def clock() -> float:
        sync()
        return time.perf_counter()

    run = train_within_budget(engine, recipe.train.epochs, s.max_minutes * 60, entry.label, log,
                              stop_at=s.target, clock=clock)
    reached = run.time_to(s.target)
    return SectionResult(
        title=f"GPU time to {100 * s.target:g}% val top-1 on Tiny ImageNet ({entry.label}, data on the GPU)",
        rows=[{"epoch": r["epoch"], "train_s": r["train_s"], "val_top1_pct": 100 * r["val_top1"]} for r in run.curve],
        columns=[("epoch", "epoch"), ("train_s", "training s"), ("val_top1_pct", "val top-1 %")],
        notes=[f"recipe {entry.path} with {', '.join(s.recipe_overrides)}; training seconds exclude evaluation; "
               + (f"reached {100 * s.target:g}% after {reached:.1f} s." if reached is not None
                  else f"did not reach {100 * s.target:g}% within {recipe.train.epochs} epochs / {s.max_minutes:g} min.")],
        details={"seconds_to_target": reached, "curve": run.curve})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="Tiny ImageNet archive or a folder holding it (default $CNNBENCH_DATA)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the smoke test")
    parser.add_argument("--tiny", action="store_true", help="a few images and steps: checks the code, measures nothing")
    parser.add_argument("--out", help="write the results (JSON) here")
    parser.add_argument("--models", nargs="+", help="override the models measured")
    parser.add_argument("--skip-time-to-target", action="store_true", help="only peaks and throughput")
    args = parser.parse_args(argv)

    from pathlib import Path

    from cnnbench.bench.suite import load_average, machine_info
    from cnnbench.data.sources import cnnbench_home
    from cnnbench.train.device import resolve_device

    device = resolve_device(args.device)
    s = GpuSettings.tiny() if args.tiny else GpuSettings()
    if args.models:
        s.models = args.models
    exact_fp32(device)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    document = {"machine": machine_info(), "device": str(device), "load_before": load_average(), "sections": {}}
    peaks = {dtype: measure_matmul_peak(dtype, str(device), sizes=s.peak_sizes, repeats=max(3, s.repeats))
             for dtype in ("fp32", "bf16")}
    sections = {"peaks": SectionResult(title=f"{device} matmul peaks (GFLOP/s)", rows=[p.row() for p in peaks.values()],
                                       columns=[("name", "kernel"), ("size", "n"), ("gflops", "GFLOP/s")])}
    recipe_data = args.data
    from cnnbench.data import load_dataset

    ds = load_dataset("tiny-imagenet", data=args.data, train_per_class=s.per_class)
    sections["throughput"] = throughput_table(s, ds, recipe_data, device, {k: p.gflops.median for k, p in peaks.items()},
                                              cnnbench_home() / "bench", log)
    if not args.skip_time_to_target:
        sections["time_to_target"] = time_to_target(s, recipe_data, device, log)
    for name, section in sections.items():
        document["sections"][name] = section.to_dict()
        print(markdown_table(section))
    document["load_after"] = load_average()
    if args.out:
        write_json(document, Path(args.out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CnnbenchError as exc:
        print(f"gpu.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
