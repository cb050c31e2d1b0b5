"""Run every CPU benchmark section and keep the results: one JSON and one Markdown file.

    python benchmarks/run_all.py [--quick] [--data ../shared/datasets] [--only SECTION ...] [--set KEY=VALUE ...]

A thin wrapper around ``cnnbench bench`` (the measuring code lives in ``cnnbench.bench``)
that names the output after the time of the run, under ``benchmarks/results/``, so a series
of runs on a shared machine can be compared. The GPU table is ``benchmarks/gpu.py`` (run it
on a CUDA machine only).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from cnnbench.cli import main as cnnbench_main

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data")
    parser.add_argument("--only", nargs="+")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON and Markdown files")
    args = parser.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"bench-{stamp}{'-quick' if args.quick else ''}"
    command = ["bench", "--out", str(args.results / f"{name}.json"), "--markdown", str(args.results / f"{name}.md")]
    command += ["--quick"] if args.quick else []
    command += ["--data", args.data] if args.data else []
    command += ["--only", *args.only] if args.only else []
    for override in args.overrides:
        command += ["--set", override]
    return cnnbench_main(command)


if __name__ == "__main__":
    sys.exit(main())
