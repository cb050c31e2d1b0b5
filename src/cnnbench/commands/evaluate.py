"""``cnnbench evaluate``, ``cnnbench predict`` and ``cnnbench export``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from cnnbench.errors import CnnbenchError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="best", metavar="NAME",
                        help="which checkpoint: best (default), last, or snapshot-<k>")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "evaluate", help="loss, top-1/top-5, per-class accuracy and confusion matrix of runs or ensembles",
        description="Evaluate a run's checkpoint on a split; writes RUN/evaluate/<tag>.json (one flat row), "
                    "<tag>_per_class.csv, <tag>_confusion.npy, <tag>_predictions.npz and <tag>_examples.npz. "
                    "Several runs are evaluated one by one, or as one softmax-averaged ensemble with --ensemble.")
    ev.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path)
    ev.add_argument("--split", default="val", help="split to evaluate (val, test, train; default val)")
    ev.add_argument("--data", metavar="PATH", help="evaluate on another dataset location with the same classes")
    ev.add_argument("--tta", choices=["none", "flip"],
                    help="test-time augmentation: flip averages the softmax of the image and its mirror "
                         "(default: the run's train.tta, the evaluation its metrics.csv holds)")
    ev.add_argument("--ensemble", action="store_true", help="average the softmax outputs of the runs")
    ev.add_argument("--snapshots", action="store_true",
                    help="evaluate the per-cycle snapshots of a cyclic_cosine run as an ensemble")
    ev.add_argument("--out", type=Path, metavar="DIR",
                    help="ensemble folder (default: ensemble-<first>-<n> beside the first run)")
    ev.add_argument("--tag", help="name of the output files (default: split[-<checkpoint> when not best]"
                                     "[-<tta> when not the run's own][-<data hash>])")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    _add_common(ev)
    ev.set_defaults(func=run_evaluate)

    pr = subparsers.add_parser(
        "predict", help="top-k classes for image files, or a challenge submission file",
        description="Print the top-k classes with names and probabilities for image files (decoded and resized "
                    "as the model expects), or with --submission write one line per image of a split in the "
                    "Tiny ImageNet challenge format ('test_0.JPEG n01443537').")
    pr.add_argument("run", metavar="RUN_DIR", type=Path)
    pr.add_argument("images", nargs="*", metavar="IMAGE", type=Path)
    pr.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    pr.add_argument("--split", default="test", help="with --submission: the split to predict (default test)")
    pr.add_argument("--submission", type=Path, metavar="FILE", help="write a submission file for --split")
    pr.add_argument("--data", metavar="PATH", help="with --submission: another dataset location")
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.add_argument("--figure", type=Path, metavar="FILE.png",
                    help="also draw each image beside its top-k guesses and probabilities")
    _add_common(pr)
    pr.set_defaults(func=run_predict)

    ex = subparsers.add_parser(
        "export", help="export a run's model to ONNX (checked with onnxruntime)",
        description="Export to ONNX (normalised float input, dynamic batch, logits out; preprocessing in the "
                    "metadata). The file is written only when onnxruntime's outputs match PyTorch's.")
    ex.add_argument("run", metavar="RUN_DIR", type=Path)
    ex.add_argument("--onnx", type=Path, required=True, metavar="FILE")
    ex.add_argument("--checkpoint", default="best", metavar="NAME", help="best (default), last or snapshot-<k>")
    ex.set_defaults(func=run_export)


def _print_row(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row))
        return
    print(f"{row['name']} [{row['tag']}]: top-1 {row['top1']:.2%}  top-5 {row['top5']:.2%}  loss {row['loss']:.4f}  "
          f"({row['images']} images, {row['seconds']:.1f} s) -> {Path(row['run']) / 'evaluate' / (row['tag'] + '.json')}")
    if row.get("snapshot_top1"):
        print(f"  single snapshots top-1: {', '.join(f'{float(v):.2%}' for v in row['snapshot_top1'].split())}")


def run_evaluate(args: argparse.Namespace) -> int:
    from cnnbench.evaluate.evaluation import EvalOptions, evaluate_ensemble, evaluate_run, evaluate_snapshots

    options = EvalOptions(split=args.split, data=args.data, tta=args.tta, checkpoint=args.checkpoint,
                          batch_size=args.batch_size, device=args.device, tag=args.tag)
    if args.ensemble and args.snapshots:
        raise CnnbenchError("--ensemble and --snapshots: choose one")
    if args.out is not None and not args.ensemble:
        raise CnnbenchError("--out: only used with --ensemble (a run's evaluation goes into RUN/evaluate/)")
    if args.ensemble:
        out = args.out or args.runs[0].parent / f"ensemble-{args.runs[0].name}-{len(args.runs)}"
        rows = [evaluate_ensemble(args.runs, out, options)]
    elif args.snapshots:
        rows = [evaluate_snapshots(run, options) for run in args.runs]
    else:
        rows = [evaluate_run(run, options) for run in args.runs]
    for row in rows:
        _print_row(row, args.json)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from cnnbench.evaluate.predict import predict_images, write_submission

    if args.submission is not None:
        if args.images:
            raise CnnbenchError("--submission predicts a whole split: give no IMAGE arguments")
        count = write_submission(args.run, args.submission, args.split, args.data, args.checkpoint, args.device)
        print(f"wrote {count} lines to {args.submission}")
        return 0
    if not args.images:
        raise CnnbenchError("predict: give one or more IMAGE files, or --split test --submission FILE")
    if args.data is not None:
        raise CnnbenchError("--data: only used with --submission")
    results = predict_images(args.run, args.images, args.top, args.checkpoint, args.device)
    if args.figure is not None:
        _save_top_k_figure(results, args.figure)
    if args.json:
        print(json.dumps([{"file": r["file"], "top": [asdict(g) for g in r["top"]]} for r in results], indent=2))
        return 0
    for r in results:
        print(r["file"])
        for g in r["top"]:
            print(f"  {g.probability:7.2%}  {g.id}  {g.name}")
    return 0


def _save_top_k_figure(results: list[dict], path: Path) -> None:
    import numpy as np

    from cnnbench.report.figures import plot_top5, save_figure

    fig = plot_top5(np.stack([r["image"] for r in results]), [Path(r["file"]).name for r in results],
                    [[g.name for g in r["top"]] for r in results],
                    np.array([[g.probability for g in r["top"]] for r in results]))
    save_figure(fig, path)
    print(f"wrote {path}", file=sys.stderr)  # stderr: --json output on stdout stays pure JSON


def run_export(args: argparse.Namespace) -> int:
    from cnnbench.evaluate.export import export_onnx

    check = export_onnx(args.run, args.onnx, args.checkpoint)
    print(f"wrote {check.file}: input (B, {', '.join(map(str, check.input_shape))}) float32, normalised; "
          f"onnxruntime matches PyTorch on batches {check.batches} (max |diff| {check.max_abs_diff:.1e})")
    return 0
