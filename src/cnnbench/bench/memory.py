"""Section ``memory``: resident memory of preparing the cache and of training from it.

(a) ``prepare`` of the whole archive in a fresh child process with an empty $CNNBENCH_HOME:
    seconds, peak RSS, the RSS of the imports alone, what prepare added on top of them, the
    cache's size and added/cache. The data issue asks for prepare in under a minute and for its
    added memory to stay small next to the cache (decoded chunks streamed to disk, not held).
(b) ResNet-18 trained for ``memory_steps`` steps in a fresh child process by the engine the
    ``train`` section times (``variant_stepper``: bf16 + channels_last, batch ``batch_size``,
    ``data_per_class`` train images per class): peak RSS against the issue's 3,000 MB at batch 128.

Each measurement runs in its own process (``python -m cnnbench.bench.memory PROBE ARG``, which
prints one JSON line), so its peak is its own and not the benchmark's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnbench.bench.results import SectionResult, Target
from cnnbench.bench.settings import BenchSettings
from cnnbench.bench.suite import BenchContext, register_section
from cnnbench.errors import CnnbenchError

PREPARE_TARGET_S = 60.0  # data issue: prepare the archive in under a minute
TRAIN_RSS_TARGET_MB = 3000.0  # issue: training ResNet-18 at batch 128 in under 3 GB resident
MEMORY_MODEL = "resnet18"
MEMORY_VARIANT = "bf16_cl"
MODULE = "cnnbench.bench.memory"


def status_mb(key: str) -> float:
    """``key`` (VmRSS: resident now, VmHWM: resident peak) of this process, in MB.

    VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak into ru_maxrss
    across exec (exec_mmap -> setmax_mm_hiwater_rss), which made a child of the benchmark
    report the benchmark's own 1.1 GB; VmHWM belongs to the child's own address space.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        raise CnnbenchError("bench memory: resident memory is read from /proc/self/status (Linux only)") from None
    found = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
    if found is None:
        raise CnnbenchError(f"bench memory: no {key} line in /proc/self/status")
    return int(found.group(1)) / 1024


def prepare_probe(archive: str) -> dict:
    """Child: decode ``archive`` into this process's (empty) $CNNBENCH_HOME; time and memory."""
    import torch  # noqa: F401 -- prepare imports torch and torchvision.io anyway: the baseline holds them
    import torchvision.io  # noqa: F401

    from cnnbench.data import prepare_dataset

    imports = status_mb("VmRSS")
    start = time.perf_counter()
    prepared = prepare_dataset("tiny-imagenet", archive)
    seconds = time.perf_counter() - start
    if not prepared.built:
        raise CnnbenchError(f"bench memory: {prepared.folder} already held a cache; prepare was not measured")
    return {"seconds": seconds, "imports_rss_mb": imports, "peak_rss_mb": status_mb("VmHWM"),
            "cache_mb": prepared.manifest["bytes"] / 2**20,
            "images": sum(split["count"] for split in prepared.manifest["splits"].values())}


def train_probe(settings_json: str) -> dict:
    """Child: train ``MEMORY_MODEL`` for ``memory_steps`` steps with the ``train`` section's engine."""
    import cnnbench.train.run  # noqa: F401 -- build_recipe_engine imports it late; count it with the imports
    from cnnbench.bench.throughput import VARIANTS, variant_stepper
    from cnnbench.train.config import build_config
    from cnnbench.train.native import freed_memory_kept

    settings = build_config(BenchSettings, json.loads(settings_json), "bench")
    imports = status_mb("VmRSS")
    ctx = BenchContext(settings, log=lambda message: None)
    stepper = variant_stepper(ctx, MEMORY_MODEL, VARIANTS[MEMORY_VARIANT])
    with freed_memory_kept():  # as `cnnbench train` runs on the CPU: the peak includes the heap it keeps
        seconds = stepper.seconds(settings.memory_steps)
    return {"seconds": seconds, "imports_rss_mb": imports, "peak_rss_mb": status_mb("VmHWM"),
            "images": settings.memory_steps * settings.batch_size}


PROBES = {"prepare": prepare_probe, "train": train_probe}


def run_probe(probe: str, argument: str, env: dict[str, str] | None = None) -> dict:
    """Run ``probe`` in a fresh Python process and return the JSON it printed last."""
    done = subprocess.run([sys.executable, "-m", MODULE, probe, argument], capture_output=True, text=True,
                          check=False, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise CnnbenchError(f"bench memory: the {probe} child exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_row(measured: str, probe: dict) -> dict:
    """One table row: the probe's numbers plus what the work added over the imports."""
    added = probe["peak_rss_mb"] - probe["imports_rss_mb"]
    cache = probe.get("cache_mb")
    return {"measured": measured, "images": probe["images"], "seconds": probe["seconds"],
            "imports_rss_mb": probe["imports_rss_mb"], "peak_rss_mb": probe["peak_rss_mb"], "added_mb": added,
            "cache_mb": cache, "added_per_cache": added / cache if cache else None}


@register_section("memory")
def memory_section(ctx: BenchContext) -> SectionResult:
    """Prepare the whole archive, then train ResNet-18 from its cache, each in a child; time and RSS."""
    from cnnbench.bench import reference_data

    s = ctx.settings
    archive = reference_data.locate_archive(s.data)
    scratch = ctx.scratch()
    scratch.mkdir(parents=True, exist_ok=True)
    ctx.log(f"memory: prepare {archive.name} in a child process with an empty CNNBENCH_HOME")
    with tempfile.TemporaryDirectory(prefix="memory-home-", dir=scratch) as home:
        prepare = run_probe("prepare", str(archive), env={"CNNBENCH_HOME": home})
    ctx.dataset(s.data_per_class)  # the cache the training child reads: built here, outside its peak
    ctx.log(f"memory: {MEMORY_MODEL} {s.memory_steps} steps at batch {s.batch_size} in a child process")
    train = run_probe("train", json.dumps(s.to_dict()))
    rows = [memory_row(f"prepare {archive.name} (fresh process, empty cache folder)", prepare),
            memory_row(f"train {MEMORY_MODEL} bf16 + channels_last, batch {s.batch_size}, {s.memory_steps} steps",
                       train)]
    per_class = "all" if s.data_per_class is None else s.data_per_class
    return SectionResult(
        title="Memory: prepare the cache, train from it (peak resident MB, one child process each)",
        rows=rows,
        columns=[("measured", "measured"), ("images", "images"), ("seconds", "seconds"),
                 ("imports_rss_mb", "imports MB"), ("peak_rss_mb", "peak MB"), ("added_mb", "added MB"),
                 ("cache_mb", "cache MB"), ("added_per_cache", "added / cache")],
        notes=["Peak = VmHWM of the child (its own address space); imports = its VmRSS after importing "
               "torch and cnnbench, before any work; added = peak - imports. One run of each (prepare "
               "decodes the whole archive).",
               "prepare: the whole archive, decoded into a temporary CNNBENCH_HOME (hashing the archive included); "
               "cache MB is the manifest's size of the files written.",
               f"train: the `train` section's engine (cache loader, batch pipeline with pad-4 crop + flip, SGD) on "
               f"{per_class} train images per class; seconds are the {s.memory_steps} steps including the first "
               "(oneDNN set-up), not a throughput figure."],
        targets=[Target("prepare seconds (whole archive, fresh process)", PREPARE_TARGET_S, prepare["seconds"],
                        unit=" s", lower_is_better=True),
                 Target(f"peak RSS training ResNet-18 at batch {s.batch_size}", TRAIN_RSS_TARGET_MB,
                        train["peak_rss_mb"], unit=" MB", lower_is_better=True)],
    )


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m cnnbench.bench.memory PROBE ARG`` prints the probe's JSON."""
    probe, argument = argv if argv is not None else sys.argv[1:]
    if probe not in PROBES:
        raise CnnbenchError(f"bench memory: unknown probe {probe!r}; expected one of {', '.join(PROBES)}")
    print(json.dumps(PROBES[probe](argument)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
