"""``cnnbench bench``: measure cnnbench against the way the reports worked, print a table, save JSON."""

from __future__ import annotations

import argparse
import shlex


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure data-path speed, training throughput, FLOP utilisation, scaling and time to accuracy",
        description="Run the benchmark sections side by side in one process and print one table per section "
                    "(medians of several runs with their spread). Sections: peaks, data, memory, train, keras, "
                    "scaling, tta. The machine's load average is recorded before and after.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats: every section in under 3 minutes on a 2-core CPU")
    parser.add_argument("--out", metavar="FILE.json", help="write the results document (JSON) here")
    parser.add_argument("--markdown", metavar="FILE.md", help="also write the tables as Markdown")
    parser.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    parser.add_argument("--data", metavar="PATH", help="Tiny ImageNet archive or a folder holding it (default $CNNBENCH_DATA)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a benchmark setting, e.g. --set repeats=3 (see cnnbench.bench.settings)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnbench.bench.results import write_json
    from cnnbench.files import check_writable, write_text
    from cnnbench.bench.settings import build_settings
    from cnnbench.bench.suite import markdown_report, run_suite

    settings = build_settings(quick=args.quick, overrides=args.overrides)
    for option, value in (("--out", args.out), ("--markdown", args.markdown)):
        if value:
            check_writable(option, Path(value))  # now, not after a run of many minutes
    if args.data:
        settings.data = args.data
    command = " ".join(["cnnbench bench"] + (["--quick"] if args.quick else [])
                       + (["--only", *args.only] if args.only else [])
                       + [f"--set {shlex.quote(o)}" for o in args.overrides]
                       + ([f"--data {shlex.quote(args.data)}"] if args.data else []))
    document = run_suite(settings, only=args.only, quick=args.quick, command=command)
    report = markdown_report(document)
    print(report)
    if args.out:
        write_json(document, Path(args.out))
        print(f"results written to {args.out}")
    if args.markdown:
        write_text(Path(args.markdown), report)
    return 0

