"""Section ``scaling``: epoch time against training-set size and input size, with a verdict.

An epoch of cnnbench's training (cache loader + batch pipeline + bf16 channels_last step)
should cost time in proportion to the work: the number of images at a fixed input size, and
the number of pixels (side squared — every convolution's cost is proportional to it, up to
rounding at the smallest feature maps) at a fixed number of images. The section fits log(time) on log(work) and
says whether the slope is 1 (linear), below (a fixed per-epoch overhead dominates) or above
(caches spill, memory bandwidth binds).
"""

from __future__ import annotations

from cnnbench.bench.results import SectionResult
from cnnbench.bench.stats import Stats, fit_linearity
from cnnbench.bench.suite import BenchContext, register_section
from cnnbench.bench.throughput import VARIANTS

SCALING_VARIANT = "bf16_cl"


def time_epochs(ctx: BenchContext, per_class: int, input_size: int) -> tuple[Stats, int]:
    """Seconds per training epoch of cnnbench's engine on ``per_class`` images per class at
    ``input_size``: windows of one epoch's worth of steps (each crossing one epoch boundary,
    so the per-epoch reshuffle is included) after the warm-up steps."""
    from cnnbench.bench.engine_runs import EngineStepper, build_recipe_engine, throughput_recipe

    s = ctx.settings
    variant = VARIANTS[SCALING_VARIANT]
    recipe = throughput_recipe(s.scaling_model, s.batch_size, input_size, "bf16", variant.channels_last,
                               variant.compile, s.data, per_class, s.seed)
    engine = build_recipe_engine(recipe, ctx.dataset(per_class))
    per_epoch = len(engine.train_stream)
    stepper = EngineStepper(engine)
    stepper.seconds(s.warmup_steps)
    seconds = Stats.of([stepper.seconds(per_epoch) for _ in range(s.scaling_repeats)], "s")
    return seconds, per_epoch * s.batch_size


def sweep_rows(ctx: BenchContext, points: list[tuple[int, int]], sweep: str) -> list[dict]:
    """One row per (images per class, input size) point: epoch seconds and work done."""
    rows = []
    for per_class, size in points:
        ctx.log(f"scaling: {sweep} {per_class}/class at {size} px")
        seconds, images = time_epochs(ctx, per_class, size)
        rows.append({"sweep": sweep, "per_class": per_class, "input_size": size, "images": images,
                     "megapixels": images * size * size / 1e6, "epoch_s": seconds,
                     "us_per_kpixel": 1e9 * seconds.median / (images * size * size)})
    return rows


def verdict_note(rows: list[dict], work_key: str, what: str, tolerance: float) -> tuple[str, dict]:
    """A sentence saying whether epoch time grows linearly with ``work_key``, and the fit."""
    fit = fit_linearity([r[work_key] for r in rows], [r["epoch_s"].median for r in rows], tolerance)
    sentence = (f"Epoch time vs {what}: {fit.verdict} (time ~ work^{fit.exponent:.2f}; straight-line fit has "
                f"{fit.overhead_s:.2f} s fixed cost per epoch, points within {100 * fit.max_deviation:.0f}% of it).")
    return sentence, fit.to_dict()


@register_section("scaling")
def scaling_section(ctx: BenchContext) -> SectionResult:
    """Epoch time over train-set sizes at 64 px, and over input sizes at a fixed train-set size."""
    s = ctx.settings
    by_images = sweep_rows(ctx, [(n, 64) for n in s.scaling_per_class], "train-set size")
    by_pixels = sweep_rows(ctx, [(s.scaling_sizes_per_class, size) for size in s.scaling_sizes], "input size")
    images_note, images_fit = verdict_note(by_images, "images", "training-set size", s.linearity_tolerance)
    pixels_note, pixels_fit = verdict_note(by_pixels, "megapixels", "input pixels (side^2)", s.linearity_tolerance)
    for row in by_images:
        row["fit"] = images_fit["verdict"]
    for row in by_pixels:
        row["fit"] = pixels_fit["verdict"]
    return SectionResult(
        title=f"Scaling: {s.scaling_model} epoch time ({SCALING_VARIANT}, batch {s.batch_size}, median [min-max])",
        rows=by_images + by_pixels,
        columns=[("sweep", "sweep"), ("per_class", "per class"), ("input_size", "px"), ("images", "images"),
                 ("epoch_s", "epoch s"), ("us_per_kpixel", "us / kpixel"), ("fit", "verdict")],
        notes=[images_note, pixels_note,
               f"{s.scaling_repeats} timed epochs per point after {s.warmup_steps} warm-up steps; "
               f"a log-log slope within 1 +- {s.linearity_tolerance:g} is called linear."],
        details={"fit_train_set_size": images_fit, "fit_input_pixels": pixels_fit},
    )
