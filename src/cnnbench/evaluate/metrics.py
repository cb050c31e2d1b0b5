"""Classification metrics from log-probabilities: loss, top-k, per-class accuracy, confusion.

Everything works on one ``(N, K)`` array of log-probabilities and the ``(N,)`` labels, so a
single model, a flip-TTA average and an ensemble are scored by the same code. Numpy only:
these are a few reductions, and keeping them torch-free lets reports recompute them anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 5


@dataclass
class Scores:
    """The metrics of one set of predictions (accuracies are fractions in [0, 1])."""

    loss: float
    """Mean negative log-likelihood of the true class."""
    top1: float
    top5: float
    per_class_top1: np.ndarray
    """(K,) accuracy of each class; NaN for classes with no images."""
    per_class_top5: np.ndarray
    class_counts: np.ndarray
    """(K,) images per true class."""
    confusion: np.ndarray
    """(K, K) int64 counts: rows are true classes, columns predicted classes."""
    topk: np.ndarray
    """(N, k) predicted class indices, most probable first."""
    topk_prob: np.ndarray
    """(N, k) their probabilities."""
    true_prob: np.ndarray
    """(N,) probability given to the true class."""
    correct: np.ndarray
    """(N,) bool: the top-1 prediction equals the label (what McNemar's test pairs up)."""

    @property
    def mean_class_top1(self) -> float:
        """Mean of the per-class accuracies (equals top-1 on a balanced set)."""
        return float(np.nanmean(self.per_class_top1))


def top_k_indices(log_probs: np.ndarray, k: int) -> np.ndarray:
    """(N, K) -> (N, k) class indices sorted by decreasing probability (ties: lower index first).

    A stable sort of the whole row: bf16 logits tie often, and ``argpartition`` picks among
    values tied at the k-th place arbitrarily. Training counts its top-k hits by the same rule
    (``cnnbench.train.loop.topk_hits``), so ``evaluate`` and metrics.csv agree.
    """
    k = min(k, log_probs.shape[1])
    return np.argsort(-log_probs, axis=1, kind="stable")[:, :k]


def top_k_accuracy(topk: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the label is among the first ``k`` columns of ``topk``."""
    return (topk[:, :k] == labels[:, None]).any(axis=1)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows true, columns predicted."""
    flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_mean(hits: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean of a bool array and the per-class counts (NaN where a class is absent)."""
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.bincount(labels, weights=hits.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


def score_predictions(log_probs: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> Scores:
    """Score ``(N, K)`` log-probabilities against ``(N,)`` int labels in ``[0, K)``."""
    log_probs = np.asarray(log_probs, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n, num_classes = log_probs.shape
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match predictions {log_probs.shape}")
    topk = top_k_indices(log_probs, k)
    true_log_prob = log_probs[np.arange(n), labels].astype(np.float64)
    hit1 = top_k_accuracy(topk, labels, 1)
    hit5 = top_k_accuracy(topk, labels, k)
    per1, counts = per_class_mean(hit1, labels, num_classes)
    per5, _ = per_class_mean(hit5, labels, num_classes)
    return Scores(
        loss=float(-true_log_prob.mean()) if n else float("nan"),
        top1=float(hit1.mean()) if n else float("nan"),
        top5=float(hit5.mean()) if n else float("nan"),
        per_class_top1=per1, per_class_top5=per5, class_counts=counts,
        confusion=confusion_matrix(labels, topk[:, 0], num_classes),
        topk=topk,
        topk_prob=np.exp(np.take_along_axis(log_probs, topk, axis=1)),
        true_prob=np.exp(true_log_prob).astype(np.float32),
        correct=hit1,
    )


def average_probabilities(log_probs: list[np.ndarray]) -> np.ndarray:
    """Log of the mean of softmax outputs (ensembles, flip TTA): log(1/M * sum_m p_m)."""
    stacked = np.stack([np.asarray(lp, dtype=np.float64) for lp in log_probs])  # (M, N, K)
    top = stacked.max(axis=0)
    # log-sum-exp keeps tiny probabilities exact instead of rounding them to 0 in float32.
    mean = top + np.log(np.exp(stacked - top).mean(axis=0))
    return mean.astype(np.float32)


def top_confused_pairs(confusion: np.ndarray, k: int = 20) -> list[tuple[int, int, int, float]]:
    """The ``k`` largest off-diagonal cells: (true, predicted, count, fraction of the true class)."""
    off = confusion.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = confusion.sum(axis=1)
    pairs = []
    for index in flat:
        true, pred = divmod(int(index), confusion.shape[1])
        count = int(off[true, pred])
        if count == 0:
            break
        pairs.append((true, pred, count, count / max(int(rows[true]), 1)))
    return pairs


def worst_classes(per_class_top1: np.ndarray, k: int = 20) -> np.ndarray:
    """Indices of the ``k`` classes with the lowest accuracy (absent classes excluded), worst first."""
    present = np.flatnonzero(~np.isnan(per_class_top1))
    order = np.argsort(per_class_top1[present], kind="stable")
    return present[order[:k]]
