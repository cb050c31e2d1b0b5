"""Views over the cached splits: per-class subsets, the seeded half split, train holdout.

These never touch the cache: they pick indices. The half split of a labelled evaluation set is
saved to a file under $CNNBENCH_HOME/splits (by file name, so it is the same whatever the
grayscale policy dropped) and reused by every later run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.files import write_bytes
from cnnbench.data.sources import cnnbench_home


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` images of every class, in their stored order."""
    if n <= 0:
        raise CnnbenchError(f"train_per_class: expected a positive number, got {n}")
    keep = []
    for c in np.unique(labels):
        keep.append(np.flatnonzero(labels == c)[:n])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def stratified_halves(files: list[str], labels: np.ndarray, seed: int, fraction: float = 0.5) -> tuple[list[str], list[str]]:
    """Split files per class: ``floor(n * fraction)`` of each class (seeded choice) to the first part.

    With Tiny ImageNet's 50 val images per class and fraction 0.5 this is the 25 + 25 split one
    report used for its val and test sets.
    """
    rng = np.random.default_rng(seed)
    first, second = [], []
    order = np.argsort(np.asarray(files), kind="stable")  # independent of the order files arrive in
    files_sorted = [files[i] for i in order]
    labels_sorted = np.asarray(labels)[order]
    for c in np.unique(labels_sorted):
        members = np.flatnonzero(labels_sorted == c)
        chosen = rng.permutation(members)
        k = int(len(members) * fraction)
        first += [files_sorted[i] for i in sorted(chosen[:k])]
        second += [files_sorted[i] for i in sorted(chosen[k:])]
    return first, second


def half_split(dataset: str, fingerprint: str, split: str, files: list[str], labels: np.ndarray,
               seed: int) -> tuple[list[str], list[str]]:
    """The saved val/test halves of a labelled split, created on first use.

    ``files``/``labels`` must be the complete labelled split as the source defines it (kept and
    excluded images), so the halves do not depend on decode options.
    """
    path = split_file_path(dataset, fingerprint, split, seed)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            val, test = saved["val"], saved["test"]
        except (OSError, ValueError, KeyError):
            raise CnnbenchError(f"{path}: damaged split file; delete it to recreate the split") from None
        if sorted(val + test) != sorted(files):
            raise CnnbenchError(f"{path}: the saved split does not match the {split} files of this source; "
                                "delete it to recreate the split")
        return val, test
    val, test = stratified_halves(files, labels, seed)
    record = {"dataset": dataset, "source": fingerprint, "split": split, "seed": seed,
              "val": val, "test": test}
    write_bytes(path, json.dumps(record, indent=0).encode())
    return val, test


def split_file_path(dataset: str, fingerprint: str, split: str, seed: int) -> Path:
    return cnnbench_home() / "splits" / f"{dataset}-{fingerprint[:12]}-{split}-half-seed{seed}.json"


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout) index arrays: ``round(n * fraction)`` of each class held out, seeded.

    A class so small that this would take all of its images is refused: training without the
    class would still score it on val and test. A fraction that rounds to no image in every class
    is refused too: the run would "evaluate" on an empty val split and report 0% and loss 0.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(members) * fraction))
        if k == len(members):
            raise CnnbenchError(f"holdout {fraction}: would hold out all {k} training image(s) of class {c}, leaving "
                                "none to train on; use a smaller holdout or more training images per class")
        held.append(members[:k])
        keep.append(members[k:])
    if not sum(len(h) for h in held):
        largest = int(np.bincount(labels).max())
        raise CnnbenchError(f"holdout {fraction}: holds out no image at all (round(n * {fraction}) is 0 for every "
                            f"class, the largest having {largest} training image(s)), so val would be empty; "
                            "use a larger holdout or more training images per class")
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))
