"""Section ``train``: training images/s per model for cnnbench's fast paths against a plain loop.

The plain baseline is what the reports and tutorials run: ``ImageFolder`` + PIL + per-image
transforms + ``DataLoader(num_workers=2)``, fp32, NCHW, SGD — the same model, batch size and
augmentation as cnnbench. cnnbench's variants add one change at a time on top of the cache
loader and batch pipeline: fp32 -> bf16 autocast -> + channels_last -> + torch.compile.
Utilisation is the achieved training FLOP/s (flop counter, forward + backward) over this
machine's matmul peak measured in the same round of turns (``peaks.matmul_probe``), and, more
conservatively, over the best matmul rate seen anywhere in the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cnnbench.bench.peaks import matmul_probe, training_flops_per_image, utilisation
from cnnbench.bench.results import SectionResult, Target
from cnnbench.bench.settings import model_spec
from cnnbench.bench.stats import Stats, ratio
from cnnbench.bench.suite import BenchContext, register_section
from cnnbench.train.native import freed_memory_kept

SPEEDUP_TARGET = 3.0  # issue 7: ResNet-18 at 64 px at least 3x the plain baseline
MFU_TARGET = 30.0  # issue 7: at least 30% of the bf16 matmul peak (percent)
HEAVY_GFLOP = 2.0  # training GFLOP per image above which a model gets fewer steps
BASELINE_LABEL = "plain loop: ImageFolder + DataLoader(2), fp32, NCHW"


@dataclass(frozen=True)
class Variant:
    """One way of running cnnbench's training step."""

    bf16: bool
    channels_last: bool
    compile: bool
    label: str
    train: tuple[tuple[str, str], ...] = ()  # recipe train.* overrides of an ablation, e.g. (("bn_impl", "torch"),)


VARIANTS = {
    "fp32": Variant(bf16=False, channels_last=False, compile=False, label="cnnbench fp32"),
    "bf16": Variant(bf16=True, channels_last=False, compile=False, label="cnnbench bf16"),
    "bf16_cl": Variant(bf16=True, channels_last=True, compile=False, label="cnnbench bf16 + channels_last"),
    "bf16_cl_compile": Variant(bf16=True, channels_last=True, compile=True,
                               label="cnnbench bf16 + channels_last + compile"),
    "bf16_cl_torch_bn": Variant(bf16=True, channels_last=True, compile=False, train=(("bn_impl", "torch"),),
                                label="cnnbench bf16 + channels_last, torch's batch norm"),
    "bf16_cl_torch_pool": Variant(bf16=True, channels_last=True, compile=False, train=(("pool_impl", "torch"),),
                                  label="cnnbench bf16 + channels_last, torch's max pool"),
    "bf16_cl_torch_optim": Variant(bf16=True, channels_last=True, compile=False, train=(("optim_impl", "torch"),),
                                   label="cnnbench bf16 + channels_last, torch's SGD and autocast's weight casts"),
    "bf16_cl_torch_conv_grad": Variant(bf16=True, channels_last=True, compile=False, train=(("conv_grad_impl", "torch"),),
                                       label="cnnbench bf16 + channels_last, without the AMX convolution kernels"),
}


def plain_train_step(model):
    """One optimiser step of the plain baseline loop: fp32, NCHW, SGD, cross-entropy.

    This is the loop of the PyTorch tutorials the reports followed; cnnbench's side is its
    own engine (``cnnbench.train.loop.train_one_epoch``), driven by ``engine_runs``.
    """
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step(images, labels) -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


class PlainStepper:
    """The plain loop, a given number of steps at a time (batches keep flowing between calls)."""

    def __init__(self, step, loader, to_device=None, synchronize=lambda: None):
        self.step, self.loader, self.to_device, self.synchronize = step, loader, to_device, synchronize
        self.batches = self._endless()

    def _endless(self):
        while True:  # a DataLoader reshuffles on each new iterator, i.e. each epoch
            for images, labels in self.loader:
                yield (self.to_device(images, labels) if self.to_device else (images, labels))

    def seconds(self, steps: int) -> float:
        self.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(*next(self.batches))
        self.synchronize()  # queued GPU work belongs to these steps
        return time.perf_counter() - start


def interleaved_rounds(steppers: dict[str, object], steps: int, repeats: int, warmup: dict[str, int],
                       log=lambda m: None, probe=None) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Seconds per ``steps`` steps of each stepper: after its warm-up steps, ``repeats`` rounds in
    which every stepper in turn times ``steps`` steps, so a burst of load from other users of the
    machine hits all paths alike instead of one path's runs. ``probe()`` (if given) runs at the
    start of each round; its results come back one dict per round."""
    for label, stepper in steppers.items():
        log(f"warm-up {label}")
        stepper.seconds(warmup[label])
    times = {label: [] for label in steppers}
    probes = []
    for _ in range(repeats):
        if probe is not None:
            probes.append(probe())
        for label, stepper in steppers.items():
            times[label].append(stepper.seconds(steps))
    return times, probes


def interleaved_rates(steppers: dict[str, object], steps: int, repeats: int, warmup: dict[str, int],
                      batch_size: int, log=lambda m: None) -> dict[str, Stats]:
    """Images/s of each stepper over ``interleaved_rounds``."""
    times, _ = interleaved_rounds(steppers, steps, repeats, warmup, log)
    return {label: Stats.of(t, "s").inverted(steps * batch_size, "images/s") for label, t in times.items()}


@dataclass
class ThroughputSetup:
    """Shared by every model of the section: the dataset, and the JPEG tree of the baseline."""

    ds: object
    train_dir: object


def prepare_setup(ctx: BenchContext) -> ThroughputSetup:
    """Load the cache and extract the JPEG tree once for all models and variants."""
    from cnnbench.bench import reference_data

    s = ctx.settings
    ds = ctx.dataset(s.data_per_class)
    train_dir = reference_data.extract_train_tree(reference_data.locate_archive(s.data), ctx.scratch(),
                                                  per_class=s.data_per_class)
    return ThroughputSetup(ds, train_dir)


def baseline_stepper(ctx: BenchContext, setup: ThroughputSetup, model_name: str) -> PlainStepper:
    """The plain loop: ImageFolder + PIL + DataLoader(2 workers), fp32, NCHW."""
    from cnnbench.bench import reference_data

    s = ctx.settings
    model = create_seeded_model(model_name, setup.ds.num_classes, s.input_size, s.seed)
    stats = setup.ds.stats
    loader = reference_data.imagefolder_loader(setup.train_dir, s.batch_size, list(stats["channel_mean"]),
                                               list(stats["channel_std"]), num_workers=s.data_workers, seed=s.seed,
                                               input_size=s.input_size)
    return PlainStepper(plain_train_step(model), loader)


def variant_stepper(ctx: BenchContext, model_name: str, variant: Variant, input_size: int | None = None):
    """cnnbench's engine (cache loader + batch pipeline + ``variant``), built as ``cnnbench train`` does."""
    from cnnbench.bench.engine_runs import EngineStepper, build_recipe_engine, throughput_recipe

    s = ctx.settings
    name, options = model_spec(model_name)
    recipe = throughput_recipe(name, s.batch_size, input_size or s.input_size,
                               "bf16" if variant.bf16 else "fp32", variant.channels_last, variant.compile,
                               s.data, s.data_per_class, s.seed, model_options=options,
                               train_options=dict(variant.train))
    return EngineStepper(build_recipe_engine(recipe, ctx.dataset(s.data_per_class)))


def measure_paths(ctx: BenchContext, setup: ThroughputSetup, model_name: str, variants: list[str],
                  steps: int, repeats: int, probe=None) -> tuple[dict[str, Stats], list[dict[str, float]]]:
    """Images/s of the plain baseline and of each cnnbench variant of ``model_name``, interleaved,
    and the matmul peaks ``probe`` read at the start of each round."""
    s = ctx.settings
    steppers = {BASELINE_LABEL: baseline_stepper(ctx, setup, model_name)}
    warmup = {BASELINE_LABEL: s.warmup_steps}
    for name in variants:
        steppers[VARIANTS[name].label] = variant_stepper(ctx, model_name, VARIANTS[name])
        # torch.compile compiles in the first steps (and again when the graph changes)
        warmup[VARIANTS[name].label] = s.warmup_steps + (2 if VARIANTS[name].compile else 0)
    times, probes = interleaved_rounds(steppers, steps, repeats, warmup,
                                       log=lambda m: ctx.log(f"train: {model_name}: {m}"), probe=probe)
    rates = {label: Stats.of(t, "s").inverted(steps * s.batch_size, "images/s") for label, t in times.items()}
    return rates, probes


def create_seeded_model(model_name: str, num_classes: int, input_size: int, seed: int):
    """``create_model`` for a ``bench.models`` entry (NAME or NAME:KEY=VALUE,...) after seeding
    torch, so every path starts from the same weights."""
    import torch

    from cnnbench.models import create_model

    name, options = model_spec(model_name)
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, in_channels=3, input_size=input_size, **options)


def model_rows(ctx: BenchContext, setup: ThroughputSetup, model_name: str) -> list[dict]:
    """The baseline row and one row per variant for ``model_name``, with ratios and utilisation."""
    s = ctx.settings
    flops = training_flops_per_image(create_seeded_model(model_name, setup.ds.num_classes, s.input_size, s.seed), s.input_size)
    heavy = flops / 1e9 > HEAVY_GFLOP
    steps = max(1, round(s.steps * s.heavy_step_fraction)) if heavy else s.steps
    repeats = max(1, round(s.repeats * s.heavy_step_fraction)) if heavy else s.repeats
    peaks = {dtype: ctx.measured_peak(dtype) for dtype in ("fp32", "bf16")}

    variants = [name for name in s.variants if not VARIANTS[name].compile or model_name in s.compile_models]
    rates, probes = measure_paths(ctx, setup, model_name, variants, steps, repeats, probe=matmul_probe(peaks))
    round_peaks = {dtype: Stats.of([p[dtype] for p in probes], "GFLOP/s") for dtype in peaks}
    baseline = rates[BASELINE_LABEL]

    def paired(rate: Stats, dtype: str) -> Stats:  # each round's rate over the peak read in that round
        return Stats.of([100 * utilisation(r, flops, p) for r, p in zip(rate.runs, round_peaks[dtype].runs)], "%")

    return [{
        "model": model_name, "path": label, "gflop_per_image": flops / 1e9, "images_per_s": rate,
        "speedup": ratio(rate, baseline),
        "mfu_bf16_pct": paired(rate, "bf16"), "mfu_fp32_pct": paired(rate, "fp32"),
        "mfu_bf16_best_peak_pct": None, "best_bf16_peak_gflops": None,  # fill_best_peak, once every model ran
        "round_peaks_gflops": round_peaks,
    } for label, rate in rates.items()]


def fill_best_peak(ctx: BenchContext, rows: list[dict]) -> tuple[float, float]:
    """Divide every row by one bf16 peak: the best median matmul rate read anywhere in the run (the
    section peak or any round of any model), or in an earlier run on this machine if that read more.

    A second pass after every model has run: a running best would give each model the peaks read
    so far, and the first model (ResNet-18, the target row) the smallest denominator of all.
    Returns (the peak divided by, the best read in this run).
    """
    measured = max([ctx.measured_peak("bf16").gflops.median] + [r["round_peaks_gflops"]["bf16"].high for r in rows])
    best = ctx.best_known_peak("bf16", measured)
    for row in rows:
        row["mfu_bf16_best_peak_pct"] = 100 * utilisation(row["images_per_s"].median, row["gflop_per_image"] * 1e9, best)
        row["best_bf16_peak_gflops"] = best
    return best, measured


THROUGHPUT_COLUMNS = [("model", "model"), ("path", "path"), ("images_per_s", "images/s"),
                      ("speedup", "x plain"), ("mfu_bf16_pct", "% bf16 peak"),
                      ("mfu_bf16_best_peak_pct", "% best bf16 peak"), ("mfu_fp32_pct", "% fp32 peak")]


@register_section("train")
def throughput_section(ctx: BenchContext) -> SectionResult:
    """Training images/s for each model: the plain baseline and cnnbench's variants."""
    s = ctx.settings
    setup = prepare_setup(ctx)
    with freed_memory_kept() as malloc:  # as `cnnbench train` runs on the CPU; the plain loop gets it too
        rows = [row for model_name in s.models for row in model_rows(ctx, setup, model_name)]
    best_peak, run_peak = fill_best_peak(ctx, rows)
    provisional = []
    if best_peak <= run_peak:  # no earlier run here read more: the denominator is this run's alone
        provisional = [f"'% best bf16 peak' divides by {best_peak:,.0f} GFLOP/s, the best read in this run; no earlier "
                       "run on this machine read more (peaks.json), so if this run saw only the VM's slow minutes the "
                       "utilisation reads high and its verdict is provisional."]
    targets = []
    resnet = [r for r in rows if r["model"] == "resnet18" and r["path"] != BASELINE_LABEL]
    if resnet:
        best = max(resnet, key=lambda r: r["images_per_s"].median)
        targets = [Target("ResNet-18 64 px training speed-up over the plain loop", SPEEDUP_TARGET, best["speedup"].value),
                   Target("ResNet-18 64 px bf16 FLOP utilisation (of the best bf16 peak read in the run)", MFU_TARGET,
                          best["mfu_bf16_best_peak_pct"], unit="%")]
    return SectionResult(
        title=f"Training throughput at {s.input_size} px, batch {s.batch_size} (images/s, median [min-max])",
        rows=rows, columns=THROUGHPUT_COLUMNS,
        notes=[f"{s.steps} timed steps x {s.repeats} rounds after {s.warmup_steps} warm-up steps, the paths taking turns "
               "within each round (models above "
               f"{HEAVY_GFLOP:g} GFLOP per training image: x{s.heavy_step_fraction:g}); data loading and "
               "augmentation are inside the timed window; torch.compile's compilation is in the warm-up, not timed "
               f"(compiled only for {', '.join(s.compile_models) or 'no model'}).",
               "cnnbench rows run the engine of `cnnbench train` (train_one_epoch: cache loader, batch pipeline, "
               "autocast, metrics) with the plain loop's optimiser (SGD 0.01, momentum 0.9) and augmentation "
               "(pad-4 crop, flip).",
               f"glibc's malloc keeps freed memory for every row, the plain loop's too, as `cnnbench train` sets it "
               f"on the CPU (cnnbench.train.native.keep_freed_memory: {malloc}).",
               "Utilisation = images/s x training FLOP per image (torch.utils.flop_counter, forward + backward) "
               "/ matmul peak. '% bf16 peak' and '% fp32 peak': each round's rate over the peak read at the start "
               "of that round (a shared VM's matmul rate moves by 2x within minutes, and a training step, partly "
               "bound by memory, moves less, so this reads high when the machine is slow), median [min-max] over "
               "rounds; '% best bf16 peak': the median rate over one bf16 peak for every row, the best matmul rate "
               "read in this run (the section's median peak or any round of any model) or in an earlier run on "
               "this machine (kept in the bench folder's peaks.json) - the machine's peak, and the figure the "
               "target uses."] + provisional,
        targets=targets,
    )
