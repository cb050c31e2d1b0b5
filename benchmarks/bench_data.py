"""Data-layer speed and memory, measured side by side in one process on the real train80 archive.

    python benchmarks/bench_data.py [--data ../shared/datasets] [--runs 3] [--batch 256]

Prints, as medians over --runs interleaved rounds, one epoch of the 16,000 train images to
normalised float batches, without augmentation and with a random flip + 4-pixel padded crop:

  cache    cnnbench BatchLoader + BatchPipeline over the memory-mapped uint8 cache
  folder   torchvision ImageFolder + PIL + transforms + ToTensor + DataLoader(num_workers=2)
           over the same JPEGs extracted to a temporary folder (persistent workers, warmed up)
  decode   reading the JPEG files and torchvision.io.decode_jpeg on every epoch, then the same
           batch pipeline as `cache`

and the ratios folder/cache and decode/cache; then `prepare` of the whole archive (26,000
images) in a fresh child process: seconds, peak RSS, the RSS the imports alone take, and the
cache size; and decode_jpeg on a list vs one call per image.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from cnnbench.data import BatchLoader, BatchPipeline, load_dataset

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "tiny-imagenet-200-train80.zip"


def median_seconds(run, runs: int) -> float:
    run()  # warm-up: page cache, worker start, allocator
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def augment_or_none():
    """The training engineer's batch augmentation (flip + padded crop) when it is there."""
    try:
        from cnnbench.data.augment import create_augment
    except ImportError:
        return None
    return create_augment({"hflip": 0.5, "crop_padding": 4})


def cache_epoch(ds, batch: int, augment) -> callable:
    loader = BatchLoader(ds.split("train"), batch_size=batch, shuffle=True, seed=0, drop_last=False)
    pipe = BatchPipeline(normalize="standardize", stats=ds.stats, input_size=64, augment=augment)
    generator = torch.Generator().manual_seed(0)

    def run():
        for images, _labels in loader:
            pipe(images, generator)

    return run


def extract_train(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if "/train/" in name and name.endswith(".JPEG"):
                z.extract(name, folder)  # the official archive's names are safe (checked by cnnbench's reader)
    return folder / "tiny-imagenet-200" / "train"


def folder_epoch(train_dir: Path, batch: int, mean, std, augment: bool) -> callable:
    from torchvision import datasets, transforms

    flip_crop = [transforms.RandomHorizontalFlip(), transforms.RandomCrop(64, padding=4, padding_mode="reflect")]
    transform = transforms.Compose((flip_crop if augment else []) + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = datasets.ImageFolder(str(train_dir), transform=transform)  # PIL loader, RGB
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)

    def run():
        for _images, _labels in loader:
            pass

    return run


def decode_epoch(train_dir: Path, ds, batch: int, augment) -> callable:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    files = sorted(str(p) for p in train_dir.rglob("*.JPEG"))
    pipe = BatchPipeline(normalize="standardize", stats=ds.stats, input_size=64, augment=augment)
    generator = torch.Generator().manual_seed(0)

    def run():
        order = torch.randperm(len(files), generator=generator)
        for start in range(0, len(files), batch):
            data = [read_file(files[i]) for i in order[start:start + batch]]
            images = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))
            pipe(images, generator)

    return run


def decode_list_vs_loop(train_dir: Path, n: int = 4000) -> tuple[float, float]:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    data = [read_file(str(p)) for p in sorted(train_dir.rglob("*.JPEG"))[:n]]
    as_list = median_seconds(lambda: decode_jpeg(data, mode=ImageReadMode.UNCHANGED), 3)
    loop = median_seconds(lambda: [decode_jpeg(d, mode=ImageReadMode.UNCHANGED) for d in data], 3)
    return as_list, loop


# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak into ru_maxrss
# across exec (exec_mmap -> setmax_mm_hiwater_rss), which made this child report the
# benchmark's own 1.1 GB; VmHWM belongs to the child's own address space.
PREPARE_CHILD = r"""
import json, re, sys, time
from cnnbench.data import prepare_dataset
import torch, torchvision.io  # what prepare imports anyway, so the baseline includes it
def status_mb(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024
before = status_mb("VmRSS")
started = time.perf_counter()
prepared = prepare_dataset("tiny-imagenet", sys.argv[1])
seconds = time.perf_counter() - started
peak = status_mb("VmHWM")
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak,
                  "cache_mb": prepared.manifest["bytes"] / 2**20, "images": sum(c["count"] for c in prepared.manifest["splits"].values())}))
"""


def measure_prepare(archive: Path) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, CNNBENCH_HOME=home)
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", PREPARE_CHILD, str(archive)], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(seconds: float | None, images: int) -> str:
    return f"{seconds:7.3f} s {images / seconds:6.0f}/s" if seconds else "-"


def interleaved_seconds(paths: dict[str, callable], runs: int) -> dict[str, list[float]]:
    """Epoch times of every path, taken in turns (A B C, A B C, ...) after one warm-up each.

    Other jobs share this machine; taking the paths in turns exposes them to the same load,
    so the per-round ratios are steadier than ratios of separately taken medians.
    """
    for run in paths.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, run in paths.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def median_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CNNBENCH_DATA", REPO.parent / "shared" / "datasets")))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in this process (default 1: on this 2-core machine shared with "
                             "other jobs, one cache epoch took 1.0 s with 1 thread vs 2.7 s with 2, as OpenMP's two "
                             "threads wait for each other; DataLoader workers run one thread each as well)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archive = args.data / ARCHIVE
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; {archive}")

    ds = load_dataset("tiny-imagenet", data=archive)
    augment = augment_or_none()
    print(f"augmentation: {'hflip 0.5 + crop_padding 4 (cnnbench.data.augment)' if augment else 'none available'}")
    mean, std = ds.stats["channel_mean"].tolist(), ds.stats["channel_std"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = extract_train(archive, Path(tmp))
        paths = {
            "cache": cache_epoch(ds, args.batch, None),
            "folder": folder_epoch(train_dir, args.batch, mean, std, False),
            "cache+aug": cache_epoch(ds, args.batch, augment),
            "folder+aug": folder_epoch(train_dir, args.batch, mean, std, augment is not None),
            "decode+aug": decode_epoch(train_dir, ds, args.batch, augment),
        }
        times = interleaved_seconds(paths, args.runs)
        as_list, loop = decode_list_vs_loop(train_dir)
    n = len(ds.split("train"))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\none epoch of {n} train images -> normalised float batches of {args.batch} "
          f"(median of {args.runs} interleaved rounds):")
    rows = [("cache   BatchLoader + BatchPipeline", med["cache"], med["cache+aug"]),
            ("folder  ImageFolder + PIL + DataLoader(2)", med["folder"], med["folder+aug"]),
            ("decode  decode_jpeg every epoch", None, med["decode+aug"])]
    print(f"  {'':43} {'no augmentation':>17} {'flip + crop':>17}")
    for name, plain, augmented in rows:
        print(f"  {name:43} {_cell(plain, n):>17} {_cell(augmented, n):>17}")
    print(f"  ratio folder/cache (median of per-round ratios): {median_ratio(times, 'folder', 'cache'):.1f}x without "
          f"augmentation, {median_ratio(times, 'folder+aug', 'cache+aug'):.1f}x with flip + crop; "
          f"decode/cache {median_ratio(times, 'decode+aug', 'cache+aug'):.1f}x (with)")
    print(f"\ndecode_jpeg of 4000 JPEGs: one call on the list {as_list:.3f} s, a Python loop {loop:.3f} s "
          f"({loop / as_list:.2f}x)")
    p = measure_prepare(archive)
    print(f"\nprepare {p['images']} images: {p['seconds']:.1f} s; peak RSS {p['peak_rss_mb']:.0f} MB "
          f"(imports alone {p['rss_before_mb']:.0f} MB, so prepare added {p['peak_rss_mb'] - p['rss_before_mb']:.0f} MB); "
          f"cache {p['cache_mb']:.0f} MB; added/cache {(p['peak_rss_mb'] - p['rss_before_mb']) / p['cache_mb']:.2f}")


if __name__ == "__main__":
    main()
