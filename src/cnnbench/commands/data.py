"""``cnnbench data``: info, show, prepare, download."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATASETS = ("tiny-imagenet", "mnist", "cifar10")


def _dataset_arguments(parser: argparse.ArgumentParser, views: bool = True) -> None:
    parser.add_argument("name", choices=DATASETS, help="dataset")
    parser.add_argument("--data", metavar="PATH",
                        help="archive, extracted folder, or folder holding the archives (default: $CNNBENCH_DATA, "
                             "then $CNNBENCH_HOME/downloads)")
    parser.add_argument("--grayscale", choices=("replicate", "drop", "gray"), default="replicate",
                        help="grayscale images: replicate to 3 channels (default), drop them, or convert everything to 1 channel")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count undecodable or wrongly sized images")
    if views:
        parser.add_argument("--train-per-class", type=int, metavar="N", help="keep the first N training images per class")
        parser.add_argument("--val-split", choices=("official", "half"), default="official",
                            help="half: split the labelled val set into val and test halves per class (seeded, saved)")
        parser.add_argument("--holdout", type=float, default=0.0, metavar="FRACTION",
                            help="hold out this stratified fraction of train as val")
        parser.add_argument("--split-seed", type=int, default=0, help="seed of the half split / holdout (default 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: info, show, prepare, download",
                                 description="Locate, download, decode and inspect the datasets.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    info = sub.add_parser("info", help="counts per split, classes, grayscale count, mean/std, cache location and size",
                          description="Prepare the cache if needed, then describe the dataset.")
    _dataset_arguments(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)

    show = sub.add_parser("show", help="save a grid of sample images with their class names",
                          description="Save a PNG grid of random images of one split, titled with class names.")
    _dataset_arguments(show)
    show.add_argument("--split", default="train", help="split to draw from (default train)")
    show.add_argument("--n", type=int, default=30, help="number of images (default 30)")
    show.add_argument("--seed", type=int, default=0, help="which images (default 0)")
    show.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    show.set_defaults(func=run_show)

    prepare = sub.add_parser("prepare", help="decode the dataset once into the memory-mapped uint8 cache",
                             description="Decode every image into $CNNBENCH_HOME/cache (reused when source and options match).")
    _dataset_arguments(prepare, views=False)
    prepare.add_argument("--force", action="store_true", help="rebuild even when a matching cache exists")
    prepare.set_defaults(func=run_prepare)

    download = sub.add_parser("download", help="fetch the official files (checksummed, resumable) or import a local copy",
                              description="Download the official archive(s) into $CNNBENCH_HOME/downloads (or --dest). "
                                          "Offline, put the file there by hand or use --from.")
    download.add_argument("name", choices=DATASETS, help="dataset")
    download.add_argument("--dest", type=Path, metavar="DIR", help="destination folder (default $CNNBENCH_HOME/downloads)")
    download.add_argument("--from", dest="from_path", type=Path, metavar="FILE",
                          help="import a local copy instead (checksum verified when it has the official file name)")
    download.add_argument("--mirror", metavar="URL", help="base URL to fetch the official file names from instead")
    download.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the server (default 15)")
    download.set_defaults(func=run_download)


def _load(args: argparse.Namespace):
    from cnnbench.data import load_dataset

    return load_dataset(args.name, data=args.data, grayscale=args.grayscale, train_per_class=args.train_per_class,
                        val_split=args.val_split, skip_bad=args.skip_bad, holdout=args.holdout,
                        split_seed=args.split_seed, progress=sys.stderr.isatty())


def run_info(args: argparse.Namespace) -> int:
    from cnnbench.data.dataset import describe_dataset

    facts = describe_dataset(_load(args))
    if args.json:
        print(json.dumps(facts, indent=1))
        return 0
    print(f"{facts['dataset']}: {facts['classes']} classes, {facts['image_size'][0]}x{facts['image_size'][1]}, "
          f"{facts['channels']} channel(s) (grayscale policy: {facts['grayscale_policy']})")
    for name, counts in facts["splits"].items():
        labelled = "" if counts["labelled"] == counts["images"] else f" ({counts['labelled']} labelled)"
        print(f"  {name:<11} {counts['images']:>7} images{labelled}")
    print(f"  grayscale in source: {', '.join(f'{k} {v}' for k, v in facts['grayscale'].items())}")
    if facts["skipped_bad"]:
        print(f"  skipped bad images: {', '.join(f'{k} {v}' for k, v in facts['skipped_bad'].items())}")
    print(f"  train mean {facts['channel_mean']}  std {facts['channel_std']} (0-1 scale)")
    print(f"  source {facts['source']}")
    print(f"  cache  {facts['cache']} ({facts['cache_bytes'] / 2**20:.1f} MB), manifest hash {facts['manifest_hash']}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cnnbench.data.gallery import save_sample_grid
    from cnnbench.errors import CnnbenchError
    from cnnbench.files import check_writable

    if args.n <= 0:
        raise CnnbenchError(f"--n: expected a positive number, got {args.n}")
    if args.seed < 0:
        raise CnnbenchError(f"--seed: expected a non-negative integer, got {args.seed}")
    check_writable("--out", args.out)  # before decoding, not an OSError traceback after it
    ds = _load(args)
    rows = save_sample_grid(ds, args.split, args.n, args.out, seed=args.seed)
    print(f"wrote {args.out} ({len(rows)} {args.split} images of {ds.name})")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from cnnbench.data import prepare_dataset
    from cnnbench.data.cache import folder_size

    prepared = prepare_dataset(args.name, args.data, grayscale=args.grayscale, skip_bad=args.skip_bad,
                               force=args.force, progress=sys.stderr.isatty())
    m = prepared.manifest
    counts = ", ".join(f"{s} {c['count']}" for s, c in m["splits"].items())
    gray = sum(c["grayscale"] for c in m["splits"].values())
    skipped = sum(c["skipped"] for c in m["splits"].values())
    how = f"decoded in {m['seconds']:.1f} s" if prepared.built else "reused (source and options unchanged)"
    print(f"{args.name}: {counts}; grayscale {gray}; skipped bad {skipped}; {how}")
    print(f"cache {prepared.folder} ({folder_size(prepared.folder) / 2**20:.1f} MB)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from cnnbench.data.download import download_dataset

    results = download_dataset(args.name, dest=args.dest, from_path=args.from_path, mirror=args.mirror,
                               timeout=args.timeout, progress=sys.stderr.isatty())
    for path, what in results:
        print(f"{path}: {what}")
    print(f"next: cnnbench data prepare {args.name} --data {results[0][0].parent}")
    return 0
