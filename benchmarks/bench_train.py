"""Training speed and memory of ResNet-18: sections ``peaks``, ``train`` and ``memory`` of ``cnnbench bench``.

    python benchmarks/bench_train.py [--data ../shared/datasets] [--quick] [--set KEY=VALUE ...] [--out FILE.json]

A thin wrapper: it runs ``cnnbench bench --only peaks train memory --set models=[resnet18]``
with these arguments after it (so ``--set models=[...]`` picks other models; any other
``cnnbench bench`` option is passed on as well); the measuring code lives in ``cnnbench.bench``.

- ``peaks`` (peaks_section.py): this machine's fp32 and bf16 matmul peaks.
- ``train`` (throughput.py): images/s of a plain loop (``ImageFolder`` + PIL +
  ``DataLoader(num_workers=2)``, fp32, NCHW) against cnnbench's own ``train_one_epoch`` on the
  uint8 cache with its fast paths switched on one at a time (fp32, bf16, + channels_last,
  + torch.compile), rounds interleaved, medians; ratios to the plain loop and FLOP utilisation
  against the measured peaks.
- ``memory`` (memory.py): the peak RSS of a child process training ResNet-18 at ``batch_size``
  (128 by default) with that engine, bf16 + channels_last (target < 3,000 MB), and ``prepare``
  of the whole archive in a fresh child process.
"""

from __future__ import annotations

import sys

from cnnbench.cli import main as cnnbench_main

SECTIONS = ("peaks", "train", "memory")
MODELS = "models=[resnet18]"  # before the caller's --set options, so theirs win


def main(argv: list[str] | None = None) -> int:
    """``cnnbench bench --only peaks train memory --set models=[resnet18]`` followed by this script's arguments."""
    return cnnbench_main(["bench", "--only", *SECTIONS, "--set", MODELS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
