"""``cnnbench compare`` and ``cnnbench report``: tables and pages over run folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    compare = subparsers.add_parser(
        "compare", help="compare runs: table, mean ± std over seeds, paired McNemar tests",
        description="Join run folders into one table (Markdown and CSV): val top-1/top-5/loss, params, MFLOPs, "
                    "epochs, s/epoch, img/s, best epoch, train-val gap; mean ± std for runs sharing a recipe "
                    "except the seed; McNemar's test between runs evaluated on the same images.")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path, help="run or ensemble folders")
    compare.add_argument("--out", type=Path, metavar="DIR",
                         help="write compare.md, compare.csv, seeds.csv, mcnemar.csv, compare.json here "
                              "(then `cnnbench report DIR` makes the page); default: print the Markdown only")
    compare.add_argument("--tag", default="val", help="which evaluation row to read (evaluate/<TAG>.json; default val)")
    compare.set_defaults(func=run_compare)

    report = subparsers.add_parser(
        "report", help="HTML + Markdown report of a run folder or a comparison folder",
        description="Write one self-contained HTML page (figures embedded) and a Markdown version with PNG "
                    "figures, for a run folder or a folder written by `cnnbench compare --out`.")
    report.add_argument("folder", metavar="RUN_DIR|COMPARE_DIR", type=Path)
    report.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: FOLDER/report)")
    report.set_defaults(func=run_report)


def run_compare(args: argparse.Namespace) -> int:
    from cnnbench.report.compare import build_comparison, write_comparison

    comparison = build_comparison(args.runs, args.tag)
    print(comparison.markdown(), end="")
    if args.out is not None:
        paths = write_comparison(comparison, args.out)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cnnbench.report.reports import write_report

    paths = write_report(args.folder, args.out)
    print(f"wrote {paths['html']} (self-contained) and {paths['markdown']} ({len(paths) - 2} figures)")
    return 0
