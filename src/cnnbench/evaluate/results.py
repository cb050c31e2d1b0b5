"""What one evaluation leaves in a folder: one flat row plus the arrays behind it.

``<folder>/evaluate/`` receives, for a tag such as ``val``, ``val-flip`` or ``test``:

- ``<tag>.json``             the flat row (loss, top1, top5, ... ; accuracies as fractions)
- ``<tag>_per_class.csv``    index, id, name, images, top1, top5, most_confused_with, confused_count
- ``<tag>_confusion.npy``    (K, K) int64 confusion matrix, rows true, columns predicted
- ``<tag>_predictions.npz``  per image: labels, top5, top5_prob, true_prob, correct, files
                             (per-image correctness makes paired tests between runs possible)
- ``<tag>_examples.npz``     uint8 images (N, H, W, C) of the most confident mistakes and a
                             fixed sample, with their indices, so reports need no dataset

Reports and comparisons read these back with ``read_predictions`` / ``read_examples``.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.metrics import Scores
from cnnbench.evaluate.runs import EVALUATE_DIR, ClassEntry, write_csv, write_json
from cnnbench.files import write_atomic

MISTAKES_KEPT = 24
SAMPLE_KEPT = 8


@dataclass
class Predictions:
    """Per-image results of one evaluation, read back from ``<tag>_predictions.npz``."""

    labels: np.ndarray      # (N,) int64
    top5: np.ndarray        # (N, 5) int64
    top5_prob: np.ndarray   # (N, 5) float32
    true_prob: np.ndarray   # (N,) float32
    correct: np.ndarray     # (N,) bool
    files: np.ndarray       # (N,) str


@dataclass
class Examples:
    """Images kept for galleries: the most confident mistakes and a fixed sample."""

    mistake_index: np.ndarray   # (M,) indices into the predictions
    mistake_images: np.ndarray  # (M, H, W, C) uint8
    sample_index: np.ndarray
    sample_images: np.ndarray


def select_examples(scores: Scores, mistakes: int = MISTAKES_KEPT, sample: int = SAMPLE_KEPT,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the most confident mistakes (highest top-1 probability first) and a seeded sample."""
    wrong = np.flatnonzero(~scores.correct)
    confident = wrong[np.argsort(-scores.topk_prob[wrong, 0], kind="stable")[:mistakes]]
    n = len(scores.correct)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    return confident, chosen


def per_class_rows(scores: Scores, classes: list[ClassEntry]) -> list[dict[str, Any]]:
    """One row per class: its accuracy and the class it is most often mistaken for."""
    off = scores.confusion.copy()
    np.fill_diagonal(off, 0)
    rows = []
    for i, entry in enumerate(classes):
        j = int(np.argmax(off[i]))
        rows.append({
            "index": i, "id": entry.id, "name": entry.name, "images": int(scores.class_counts[i]),
            "top1": f"{scores.per_class_top1[i]:.6f}", "top5": f"{scores.per_class_top5[i]:.6f}",
            "most_confused_with": classes[j].name if off[i, j] else "",
            "confused_count": int(off[i, j]),
        })
    return rows


def score_row(scores: Scores, classes: list[ClassEntry]) -> dict[str, Any]:
    """The metric part of an evaluation row."""
    present = ~np.isnan(scores.per_class_top1)
    worst = int(np.flatnonzero(present)[np.argmin(scores.per_class_top1[present])]) if present.any() else None
    return {
        "images": int(len(scores.correct)),
        "loss": round(scores.loss, 6), "top1": round(scores.top1, 6), "top5": round(scores.top5, 6),
        "mean_class_top1": round(scores.mean_class_top1, 6) if present.any() else None,
        "worst_class": classes[worst].name if worst is not None else "",
        "worst_class_top1": round(float(scores.per_class_top1[worst]), 6) if worst is not None else None,
    }


def write_arrays(path: Path, array: np.ndarray | None = None, **arrays: np.ndarray) -> Path:
    """Atomically write one array (``.npy``) or named arrays (compressed ``.npz``)."""
    def write(tmp: Path) -> None:
        # Through a file object: np.save would append ".npy" to the temporary name.
        with open(tmp, "wb") as f:
            np.save(f, array) if array is not None else np.savez_compressed(f, **arrays)

    return write_atomic(path, write)


def write_evaluation(folder: Path, tag: str, row: dict[str, Any], scores: Scores, labels: np.ndarray,
                     classes: list[ClassEntry], files: list[str], images: np.ndarray | None) -> dict[str, Path]:
    """Write the row and its files under ``folder/evaluate/``; returns the paths written.

    ``images`` is the split's uint8 (N, H, W, C) array (memory-mapped is fine) used to keep the
    example images; None keeps no examples. An earlier row of the same tag is removed first, so
    a row is only ever beside the files of its own evaluation.
    """
    out = Path(folder) / EVALUATE_DIR
    # The row marks a complete set: an older row must not outlive a re-evaluation that fails below
    # (its numbers beside new arrays would mix two evaluations in `compare`).
    (out / f"{tag}.json").unlink(missing_ok=True)
    if images is None:
        (out / f"{tag}_examples.npz").unlink(missing_ok=True)
    paths = {
        "per_class": write_csv(out / f"{tag}_per_class.csv", per_class_rows(scores, classes)),
        "confusion": write_arrays(out / f"{tag}_confusion.npy", scores.confusion),
        "predictions": write_arrays(
            out / f"{tag}_predictions.npz", labels=np.asarray(labels, dtype=np.int64),
            top5=scores.topk.astype(np.int64), top5_prob=scores.topk_prob.astype(np.float32),
            true_prob=scores.true_prob, correct=scores.correct, files=np.asarray(files, dtype=str)),
    }
    if images is not None:
        mistakes, sample = select_examples(scores)
        paths["examples"] = write_arrays(
            out / f"{tag}_examples.npz", mistake_index=mistakes, mistake_images=np.asarray(images[mistakes]),
            sample_index=sample, sample_images=np.asarray(images[sample]))
    # The row goes last: its presence means every file above is complete.
    paths["row"] = write_json(out / f"{tag}.json", row)
    return paths


# What numpy raises for a truncated or foreign .npy/.npz (zlib.error: damaged deflate data inside an .npz).
_DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _damaged(path: Path, exc: Exception) -> CnnbenchError:
    return CnnbenchError(f"{path}: damaged ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); "
                         "re-run `cnnbench evaluate` to write it again")


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise CnnbenchError(f"{path}: no array {missing[0]!r} (expected {', '.join(keys)})")
            return {k: data[k] for k in keys}
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: not found (run `cnnbench evaluate` on this folder first)") from None
    except _DAMAGED as exc:
        raise _damaged(path, exc) from None


def read_predictions(folder: Path, tag: str = "val") -> Predictions:
    """Per-image predictions written by an evaluation."""
    path = Path(folder) / EVALUATE_DIR / f"{tag}_predictions.npz"
    return Predictions(**_load_npz(path, tuple(Predictions.__dataclass_fields__)))


def read_examples(folder: Path, tag: str = "val") -> Examples | None:
    """The kept example images of an evaluation, or None when it kept none."""
    path = Path(folder) / EVALUATE_DIR / f"{tag}_examples.npz"
    if not path.exists():
        return None
    return Examples(**_load_npz(path, tuple(Examples.__dataclass_fields__)))


def read_confusion(folder: Path, tag: str = "val") -> np.ndarray:
    """The (K, K) confusion matrix of an evaluation."""
    path = Path(folder) / EVALUATE_DIR / f"{tag}_confusion.npy"
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: not found (run `cnnbench evaluate` on this folder first)") from None
    except _DAMAGED as exc:
        raise _damaged(path, exc) from None
