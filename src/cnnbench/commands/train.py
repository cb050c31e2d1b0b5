"""``cnnbench train RECIPE.yaml [--set key=value ...] [--out RUN_DIR] [--resume RUN_DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cnnbench train recipes/quick-tiny-imagenet.yaml --out runs/quick
  cnnbench train recipes/resnet18-modern.yaml --set optim.lr=0.2 --set train.epochs=30
  cnnbench train --resume runs/quick            (after Ctrl-C, SIGTERM or a crash)
  torchrun --standalone --nproc_per_node 2 -m cnnbench train RECIPE.yaml --out runs/ddp
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one model from a recipe into a run folder",
        description="Train one model from a YAML recipe and write a run folder: recipe.yaml, env.json, "
                    "metrics.csv, classes.json, tb/, checkpoints/{last,best}.pt, summary.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", type=Path, metavar="RECIPE.yaml",
                        help="the recipe (optional with --resume, which uses the run's own recipe.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set optim.lr=0.01 (repeatable; values are YAML)")
    parser.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default runs/<recipe name>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; one log line per epoch")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (overrides train.device)")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from cnnbench.errors import CnnbenchError
    from cnnbench.train.config import load_recipe
    from cnnbench.train.run import train_run

    if args.resume is not None:
        if args.overrides or args.overwrite or (args.out is not None and args.out != args.resume):
            raise CnnbenchError("--resume continues a run exactly as recorded: it takes no --set, --out or --overwrite")
        recipe = load_recipe(args.recipe) if args.recipe is not None else None
        result = train_run(recipe, args.resume, resume=True, quiet=args.quiet, device=args.device)
    else:
        if args.recipe is None:
            raise CnnbenchError("train: expected a recipe file (cnnbench train RECIPE.yaml) or --resume RUN_DIR")
        recipe = load_recipe(args.recipe, args.overrides)
        out = args.out if args.out is not None else Path("runs") / recipe.name
        result = train_run(recipe, out, overwrite=args.overwrite, quiet=args.quiet, device=args.device)
    summary = result.summary
    if summary:
        print(f"{result.status}: {result.run_dir}  epochs {summary['epochs']}  "
              f"val_top1 {_pct(summary.get('val_top1'))}  {describe_best(summary)}  {summary['seconds']:.0f}s")
    return 0 if result.status != "stopped" else 130


def describe_best(summary: dict) -> str:
    """best.pt in words: its epoch, the metric that chose it, and that epoch's val metrics."""
    if summary.get("best_epoch") is None:
        return "best.pt -"
    monitor = summary.get("monitor") or "val_top1"
    shown = [f"val_top1 {_pct(summary.get('best_val_top1'))}"]
    if monitor == "val_top5":
        shown.insert(0, f"val_top5 {_pct(summary.get('best_val_top5'))}")
    elif monitor == "val_loss" and summary.get("best_val_loss") is not None:
        shown.insert(0, f"val_loss {summary['best_val_loss']:.4f}")
    return f"best.pt: epoch {summary['best_epoch']} by {monitor} ({', '.join(shown)})"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


