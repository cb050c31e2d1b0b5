"""``load_dataset``: locate the source, prepare the cache if needed, map it, apply the split views."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.data.cache import (CacheOptions, build_cache, cache_dir_for, folder_size, read_manifest,
                                 source_fingerprint)
from cnnbench.data.readers import ClassInfo, Reader, get_reader, locate
from cnnbench.data.sources import DatasetLocation, search_paths
from cnnbench.data.splits import first_per_class, half_split, stratified_holdout
from cnnbench.data.stats import compute_stats

VAL_SPLITS = ("official", "half")


@dataclass
class Split:
    """One split: uint8 images (N, H, W, C), int64 labels (-1 = unlabelled), source file names."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    files: list[str]
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray, name: str | None = None) -> "Split":
        """A new split of the given rows (copied out of the memory map: subsets are small)."""
        indices = np.asarray(indices, dtype=np.int64)
        return Split(name or self.name, self.images[indices], self.labels[indices],
                     [self.files[i] for i in indices], None if self.boxes is None else self.boxes[indices])


@dataclass
class Dataset:
    """A prepared dataset as the rest of cnnbench sees it (see docs/design.md)."""

    name: str
    classes: list[ClassInfo]
    image_size: tuple[int, int]
    channels: int
    stats: dict[str, np.ndarray]
    manifest_hash: str
    cache_dir: Path
    manifest: dict
    splits: dict[str, Split] = field(default_factory=dict)
    grayscale_count: dict[str, int] = field(default_factory=dict)
    """Grayscale images in each split of the source (whatever the policy did with them)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_names(self) -> list[str]:
        return list(self.splits)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise CnnbenchError(f"{self.name}: no split {name!r}; expected one of {', '.join(self.splits)}")
        return self.splits[name]


@dataclass
class PreparedCache:
    """Where a prepared cache lives and what it holds."""

    reader: type[Reader]
    location: DatasetLocation
    fingerprint: str
    folder: Path
    manifest: dict
    built: bool
    """True when this call decoded the source (False: an existing cache was reused)."""


def prepare_dataset(name: str, data: str | Path | None = None, grayscale: str = "replicate",
                    skip_bad: bool = False, force: bool = False, progress: bool = False) -> PreparedCache:
    """Decode the dataset into its cache unless a cache for this source and these options exists."""
    reader = get_reader(name)
    options = CacheOptions(grayscale=grayscale, skip_bad=skip_bad)
    location = locate(reader, search_paths(data), explicit=data is not None)
    fingerprint = source_fingerprint(reader.source_files(location), location.path)
    folder = cache_dir_for(reader, fingerprint, options)
    manifest = read_manifest(folder)
    if manifest is not None and not force and _manifest_matches(manifest, reader, fingerprint, options):
        return PreparedCache(reader, location, fingerprint, folder, manifest, built=False)
    # a folder of that name without a readable manifest is damaged, not a cache: replace it too
    build_cache(reader, location, fingerprint, options, folder, progress=progress,
                replace=force or folder.exists())
    return PreparedCache(reader, location, fingerprint, folder, read_manifest(folder), built=True)


def _manifest_matches(manifest: dict, reader: type[Reader], fingerprint: str, options: CacheOptions) -> bool:
    return (manifest.get("reader_version") == reader.version and manifest.get("dataset") == reader.name
            and manifest.get("source", {}).get("fingerprint") == fingerprint
            and manifest.get("options") == options.as_dict())


def _load_split(folder: Path, name: str) -> Split:
    boxes_path = folder / f"{name}_boxes.npy"
    return Split(
        name=name,
        images=np.load(folder / f"{name}_images.npy", mmap_mode="r"),
        labels=np.load(folder / f"{name}_labels.npy"),
        files=json.loads((folder / f"{name}_files.json").read_text()),
        boxes=np.load(boxes_path) if boxes_path.exists() else None,
    )


def _read_cache(folder: Path, manifest: dict) -> tuple[dict[str, Split], dict[str, np.ndarray], list[ClassInfo], list[dict]]:
    """Every file of a finished cache: the splits (memory-mapped), train statistics, classes, excluded images."""
    cached = {split: _load_split(folder, split) for split in manifest["splits"]}
    stats = dict(np.load(folder / "stats.npz"))
    classes = [ClassInfo(**c) for c in json.loads((folder / "classes.json").read_text())]
    excluded = json.loads((folder / "excluded.json").read_text())
    return cached, stats, classes, excluded


def _eval_halves(prepared: PreparedCache, splits: dict[str, Split], excluded: list[dict],
                 seed: int) -> tuple[Split, Split]:
    """The saved 50/50 stratified split of the dataset's labelled evaluation split."""
    source = prepared.reader.eval_split
    kept = splits[source]
    gone = [e for e in excluded if e["split"] == source]
    files = kept.files + [e["file"] for e in gone]
    labels = np.concatenate([kept.labels, np.asarray([e["label"] for e in gone], dtype=np.int64)])
    val_files, test_files = half_split(prepared.reader.name, prepared.fingerprint, source, files, labels, seed)
    position = {f: i for i, f in enumerate(kept.files)}

    def rows(names: list[str]) -> np.ndarray:  # files the grayscale policy dropped are simply absent
        return np.asarray([position[f] for f in names if f in position], dtype=np.int64)

    return kept.subset(rows(val_files), "val"), kept.subset(rows(test_files), "test")


def check_view_options(val_split: str, holdout: float, split_seed: int) -> None:
    if val_split not in VAL_SPLITS:
        raise CnnbenchError(f"val_split: expected one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    if not 0.0 <= holdout < 1.0:
        raise CnnbenchError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    if holdout and val_split == "half":
        raise CnnbenchError("holdout and val_split=half both define the val split; choose one")
    if not isinstance(split_seed, (int, np.integer)) or isinstance(split_seed, bool) or split_seed < 0:
        raise CnnbenchError(f"split_seed: expected a non-negative integer, got {split_seed!r}")  # numpy seeds are >= 0


def arrange_splits(prepared: PreparedCache, cached: dict[str, Split], excluded: list[dict], train_per_class: int | None,
                   val_split: str, holdout: float, split_seed: int) -> dict[str, Split]:
    """The splits a run sees: train, val, test (and 'unlabelled' for Tiny ImageNet's test images).

    * official: the dataset's own splits; for datasets with only train/test (MNIST, CIFAR-10)
      ``val`` is the official test split (the same arrays) unless ``holdout`` carves it from train.
    * half: the labelled evaluation split cut into val and test halves per class (seeded, saved).
    * holdout: a stratified fraction of train becomes val; the official labelled split is test.
    """
    check_view_options(val_split, holdout, split_seed)
    eval_name = prepared.reader.eval_split
    train = cached["train"]
    if train_per_class is not None:
        train = train.subset(first_per_class(train.labels, train_per_class))
    out = {"train": train}
    labelled_eval = cached[eval_name]
    if val_split == "half":
        out["val"], out["test"] = _eval_halves(prepared, cached, excluded, split_seed)
    elif holdout:
        keep, held = stratified_holdout(train.labels, holdout, split_seed)
        out["train"], out["val"] = train.subset(keep), train.subset(held, "val")
        out["test"] = dataclasses.replace(labelled_eval, name="test")
    else:
        out["val"] = dataclasses.replace(labelled_eval, name="val")
        if eval_name == "test":
            out["test"] = cached["test"]
    if eval_name == "val" and "test" in cached:  # Tiny ImageNet's official test images carry no labels
        key = "unlabelled" if "test" in out else "test"
        out[key] = dataclasses.replace(cached["test"], name=key)
    return out


def view_hash(content_hash: str, view: dict) -> str:
    blob = json.dumps({"cache": content_hash, "view": view}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_dataset(name: str, data: str | Path | None = None, grayscale: str = "replicate",
                 train_per_class: int | None = None, val_split: str = "official", skip_bad: bool = False,
                 holdout: float = 0.0, split_seed: int = 0, progress: bool = False) -> Dataset:
    """Prepare (once) and memory-map a dataset; see docs/design.md for the returned ``Dataset``.

    ``holdout`` and ``split_seed`` extend the design contract: a stratified fraction of train held
    out as val (``DataConfig.holdout``), and the seed of that and of the half split (kept apart
    from the run seed so runs with different seeds see the same split).
    """
    check_view_options(val_split, holdout, split_seed)  # before minutes of decoding, not after
    if train_per_class is not None and train_per_class <= 0:
        raise CnnbenchError(f"train_per_class: expected a positive number, got {train_per_class}")
    prepared = prepare_dataset(name, data, grayscale=grayscale, skip_bad=skip_bad, progress=progress)
    manifest, folder = prepared.manifest, prepared.folder
    try:
        cached, stats, classes, excluded = _read_cache(folder, manifest)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # BadZipFile: a damaged stats.npz
        raise CnnbenchError(f"{folder}: damaged cache ({exc.__class__.__name__}: {exc}); "
                            f"rebuild it with `cnnbench data prepare {name} --force`") from None
    splits = arrange_splits(prepared, cached, excluded, train_per_class, val_split, holdout, split_seed)
    if splits["train"] is not cached["train"]:  # statistics always describe the training images this run uses
        stats = compute_stats(splits["train"].images)
    view = {"train_per_class": train_per_class, "val_split": val_split, "holdout": holdout, "split_seed": split_seed}
    return Dataset(
        name=name, classes=classes, image_size=tuple(manifest["image_size"]), channels=manifest["channels"],
        stats=stats, manifest_hash=view_hash(manifest["content_hash"], view), cache_dir=folder,
        manifest=manifest, splits=splits,
        grayscale_count={s: c["grayscale"] for s, c in manifest["splits"].items()},
    )


def describe_dataset(ds: Dataset) -> dict:
    """The facts ``cnnbench data info`` prints, as plain data."""
    return {
        "dataset": ds.name,
        "classes": ds.num_classes,
        "image_size": list(ds.image_size),
        "channels": ds.channels,
        "splits": {name: {"images": len(s), "labelled": int((s.labels >= 0).sum())} for name, s in ds.splits.items()},
        "grayscale": ds.grayscale_count,
        "grayscale_policy": ds.manifest["options"]["grayscale"],
        "skipped_bad": {s: c["skipped"] for s, c in ds.manifest["splits"].items() if c["skipped"]},
        "channel_mean": [round(float(v), 4) for v in ds.stats["channel_mean"]],
        "channel_std": [round(float(v), 4) for v in ds.stats["channel_std"]],
        "source": ds.manifest["source"]["path"],
        "cache": str(ds.cache_dir),
        "cache_bytes": folder_size(ds.cache_dir),
        "manifest_hash": ds.manifest_hash,
    }
