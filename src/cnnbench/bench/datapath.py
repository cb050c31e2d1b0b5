"""Section ``data``: one epoch of augmented, normalised batches by three data paths.

(a) cnnbench: the decoded uint8 cache (memory-mapped) -> ``BatchLoader`` -> ``BatchPipeline``
    with batch augmentation; (b) ``ImageFolder`` + PIL + transforms + ``DataLoader(2 workers)``;
(c) ``torchvision.io`` JPEG decoding every epoch, then the same batch augmentation as (a).
Each path produces the same thing a training step consumes: float (B, 3, 64, 64) normalised
batches, augmented with reflect-pad-4 crops and horizontal flips. (a) and (b) also run without
augmentation: the data issue's own comparison, "one epoch of the train cache as normalised
float batches". No model runs here.
"""

from __future__ import annotations

import itertools
import time

from cnnbench.bench import reference_data
from cnnbench.bench.results import SectionResult, Target
from cnnbench.bench.stats import Stats, speedup_from_times
from cnnbench.bench.suite import BenchContext, register_section

DATA_PATH_TARGET = 20.0  # issues 2 and 7: (a) at least 20x faster than (b), without and with augmentation


def standard_augment():
    """The augmentation every path applies: reflect-pad 4 + random 64 px crop, horizontal flip."""
    from cnnbench.bench.engine_runs import BENCH_AUGMENT
    from cnnbench.data.augment import create_augment

    return create_augment(BENCH_AUGMENT)


def cnnbench_epoch(loader, pipeline, generator) -> int:
    """(a): one epoch through the cache loader and batch pipeline; returns images seen."""
    seen = 0
    for images, _labels in loader:
        batch = pipeline(images, generator)
        seen += batch.shape[0]
    return seen


def reference_epoch(loader) -> int:
    """(b): one epoch of the ImageFolder DataLoader; returns images seen."""
    seen = 0
    for batch, _labels in loader:
        seen += batch.shape[0]
    return seen


def decode_epoch(files: list[str], batch_size: int, pipeline, generator, seed: int) -> int:
    """(c): one epoch decoding every JPEG with torchvision.io, then the batch pipeline."""
    seen = 0
    for images in reference_data.decode_jpeg_batches(files, batch_size, seed=seed):
        batch = pipeline(images, generator)
        seen += batch.shape[0]
    return seen


def _time_epochs(run_epoch, repeats: int) -> tuple[Stats, int]:
    """Time ``repeats`` epochs after one untimed warm-up epoch (page cache, worker imports)."""
    images = run_epoch()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    return Stats.of(times, "s"), images


@register_section("data")
def data_path_section(ctx: BenchContext) -> SectionResult:
    """Epoch time of the three data paths on the Tiny ImageNet train split, with ratios to (a)."""
    import torch

    from cnnbench.data import BatchLoader, BatchPipeline
    from cnnbench.train.native import batch_pipeline_kernel

    s = ctx.settings
    ds = ctx.dataset(s.data_per_class)
    split = ds.split("train")
    mean, std = ds.stats["channel_mean"], ds.stats["channel_std"]
    generator = torch.Generator().manual_seed(s.seed)
    kernel = batch_pipeline_kernel()  # as `cnnbench train` does; (c)'s NCHW batches take the step-by-step path
    pipeline = BatchPipeline(normalize="standardize", stats=ds.stats, input_size=64,
                             augment=standard_augment(), channels_last=True, move_normalize=kernel)
    plain_pipeline = BatchPipeline(normalize="standardize", stats=ds.stats, input_size=64, channels_last=True,
                                   move_normalize=kernel)
    loader = BatchLoader(split, batch_size=s.batch_size, shuffle=True, seed=s.seed, drop_last=True)
    epoch = itertools.count()

    def cache_path(pipe):
        def run() -> int:
            loader.set_epoch(next(epoch))
            return cnnbench_epoch(loader, pipe, generator)
        return run

    ctx.log("data: extracting the JPEG tree for the reference paths (once)")
    train_dir = reference_data.extract_train_tree(reference_data.locate_archive(s.data), ctx.scratch(),
                                                  per_class=s.data_per_class)
    folder_loaders = {aug: reference_data.imagefolder_loader(train_dir, s.batch_size, list(mean), list(std),
                                                             num_workers=s.data_workers, seed=s.seed, augment=aug)
                      for aug in (True, False)}
    files, _ = reference_data.list_jpegs(train_dir)

    paths = {  # the first of each group is what the group's ratios divide by
        "(a) cnnbench cache + batch augment": cache_path(pipeline),
        f"(b) ImageFolder + PIL + DataLoader({s.data_workers} workers)": lambda: reference_epoch(folder_loaders[True]),
        "(c) torchvision.io decode every epoch + batch augment":
            lambda: decode_epoch(files, s.batch_size, pipeline, generator, s.seed),
        "(a) without augmentation": cache_path(plain_pipeline),
        "(b) without augmentation": lambda: reference_epoch(folder_loaders[False]),
    }
    timings = {}
    for name, run in paths.items():
        ctx.log(f"data: {name}")
        timings[name] = _time_epochs(run, s.repeats)

    rows = []
    for name, (seconds, images) in timings.items():
        base = timings["(a) without augmentation" if "without" in name else "(a) cnnbench cache + batch augment"][0]
        rows.append({"path": name, "images": images, "epoch_s": seconds,
                     "images_per_s": seconds.inverted(images, "images/s"),
                     "slower_than_a": speedup_from_times(base, seconds)})
    return SectionResult(
        title=f"Data path: one epoch of {rows[0]['images']:,} Tiny ImageNet train images at 64 px, batch {s.batch_size}",
        rows=rows,
        columns=[("path", "path"), ("epoch_s", "epoch s"), ("images_per_s", "images/s"),
                 ("slower_than_a", "time / (a)")],
        notes=[f"median [min-max] of {s.repeats} epochs after one warm-up epoch; every path yields float "
               "normalised (B, 3, 64, 64) batches, with pad-4 crops and flips unless marked 'without "
               "augmentation' (those divide by (a) without augmentation); the cache is prepared beforehand "
               "(a one-off decode, not timed)."],
        targets=[Target("data path (b) time / (a) time, with augmentation", DATA_PATH_TARGET, rows[1]["slower_than_a"].value),
                 Target("data path (b) time / (a) time, without augmentation", DATA_PATH_TARGET,
                        rows[4]["slower_than_a"].value)],
    )
