"""Data-layer speed and memory on the real archive: sections ``data`` and ``memory`` of ``cnnbench bench``.

    python benchmarks/bench_data.py [--data ../shared/datasets] [--quick] [--set KEY=VALUE ...] [--out FILE.json]

A thin wrapper: it runs ``cnnbench bench --only data memory`` with these arguments (any other
``cnnbench bench`` option is passed on as well); the measuring code lives in ``cnnbench.bench``.

- ``data`` (datapath.py): one epoch of the train images to augmented, normalised float batches
  by (a) cnnbench's uint8 cache + ``BatchLoader`` + ``BatchPipeline``, (b) ``ImageFolder`` + PIL +
  ``DataLoader(num_workers=2)``, (c) ``decode_jpeg`` every epoch; medians of ``repeats`` epochs
  and the ratios to (a).
- ``memory`` (memory.py): ``prepare`` of the whole archive in a fresh child process (seconds,
  peak RSS, the RSS of the imports alone, cache size, added/cache), and the peak RSS of a child
  training ResNet-18 from the cache with cnnbench's engine.
"""

from __future__ import annotations

import sys

from cnnbench.cli import main as cnnbench_main

SECTIONS = ("data", "memory")


def main(argv: list[str] | None = None) -> int:
    """``cnnbench bench --only data memory`` followed by this script's arguments."""
    return cnnbench_main(["bench", "--only", *SECTIONS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
