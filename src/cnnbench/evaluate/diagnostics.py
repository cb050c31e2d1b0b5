"""Diagnostics the reports did by eye, computed from ``metrics.csv``.

Overfitting (best epoch, train-val gap at the best and last epochs, val loss rising while train
loss falls), a model that is not learning (train accuracy near chance), one still improving when
it stopped (under-trained: more epochs or steps would raise it), an eval-mode network far
from the training one (val loss many times a uniform guess's while the training batches are fit
moderately: batch-norm running statistics that have not caught up), and sanity flags for
numbers that should not happen (val accuracy far above train accuracy, NaN losses). Results
identical across different models are a cross-run check: ``identical_results``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Val top-1 above train top-1 by more than this is called out. Dropout and heavy augmentation
# make train accuracy (measured on augmented batches in train mode) a few points lower than val
# accuracy in healthy runs; ten points is beyond what those explain.
VAL_ABOVE_TRAIN_MARGIN = 0.10
# Val loss must have risen by this fraction above its minimum before we call it "rising", so
# that epoch-to-epoch noise on a flat curve does not trigger the sentence.
RISING_TOLERANCE = 0.02
# Val loss above this many times ln(classes) (a uniform guess's loss), while train loss is still
# above half of it, is not overfitting (that drives train loss towards 0) but an eval-mode network
# unlike the training one. Seen on qmul's MNIST quick pass: Inception-V3 after 10 steps, val loss
# 290 against train 3.2 (ln 10 = 2.3), 9.5% val top-1 in eval mode and 35% with batch statistics.
EVAL_MODE_LOSS_RATIO = 3.0
EVAL_MODE_CAUSE = "batch-norm running statistics that have not caught up"
"""The likely cause the diagnosis, the study reading and ``cnnbench compare`` all name."""
# A run "still improving" when it stopped: its last evaluation is its best (within half a
# point), and over the last quarter of its evaluations (at least two intervals) val top-1 rose by
# at least this many points and this fraction of its last value. Report 002's simple CNN and
# VGG-like net on train80 (plain SGD 0.01, 40 epochs): 7.6 -> 9.2% and 2.3 -> 3.2% over their
# last 10 epochs; its logistic regression (3.7 -> 4.0%, +9%) has levelled off and is not flagged.
STILL_RISING_POINTS = 0.005
STILL_RISING_FRACTION = 0.10


@dataclass
class Diagnosis:
    """What the curves of one run say, as numbers and plain sentences."""

    epochs: int
    best_epoch: int | None
    """Epoch with the highest val top-1 (1-based, as in metrics.csv)."""
    best_val_top1: float
    gap_at_best: float
    """train top-1 minus val top-1 at the best epoch (positive: overfitting)."""
    gap_at_last: float
    val_loss_rising_since: int | None
    """Epoch of the val-loss minimum when val loss has risen since while train loss fell."""
    not_learning: bool
    """Train top-1 never rose clearly above chance (1 / classes)."""
    still_rising_since: int | None = None
    """The epoch that opens the last quarter of evaluations when val top-1 was still rising
    clearly over it and ended at its best (see STILL_RISING_POINTS): under-trained."""
    eval_mode_off_at: int | None = None
    """The last epoch whose val loss was over EVAL_MODE_LOSS_RATIO x ln(classes) while train loss stayed
    above half of ln(classes) and train top-1 above chance: the eval-mode network is off, not overfit."""
    sentences: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    """Sanity warnings: numbers that point to a bug rather than a finding."""

    def as_row(self) -> dict[str, Any]:
        """The numeric part as a flat row (for comparison tables)."""
        row = asdict(self)
        row.pop("sentences")
        row.pop("flags")
        return row


def chance_threshold(num_classes: int) -> float:
    """Train top-1 at or below this counts as 'near chance': twice chance, at most chance + 5 points."""
    chance = 1.0 / num_classes
    return min(2 * chance, chance + 0.05)


def _value_at(column: np.ndarray, index: int | None) -> float:
    return float(column[index]) if index is not None and index < len(column) else math.nan


def _val_loss_rising_since(metrics: dict[str, np.ndarray]) -> int | None:
    val_loss, train_loss, epochs = metrics["val_loss"], metrics["train_loss"], metrics["epoch"]
    evaluated = np.flatnonzero(~np.isnan(val_loss))
    if len(evaluated) < 3:
        return None
    low = evaluated[np.argmin(val_loss[evaluated])]
    last = evaluated[-1]
    if last - low < 2 or val_loss[last] <= val_loss[low] * (1 + RISING_TOLERANCE):
        return None
    if not train_loss[last] < train_loss[low]:
        return None  # both rising: divergence, not overfitting
    return int(epochs[low])


def _still_rising_since(metrics: dict[str, np.ndarray], evaluated: np.ndarray) -> int | None:
    val_top1 = metrics["val_top1"]
    if len(evaluated) < 3:
        return None
    start = evaluated[-1 - max(2, len(evaluated) // 4)]  # three evaluations: the first
    last, best = val_top1[evaluated[-1]], np.max(val_top1[evaluated])
    gain = last - val_top1[start]
    if last < best - STILL_RISING_POINTS / 2 or gain < STILL_RISING_POINTS or gain < STILL_RISING_FRACTION * last:
        return None
    return int(metrics["epoch"][start])


def still_rising_gain(d: Diagnosis, metrics: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """(val top-1 gain since ``d.still_rising_since``, the last evaluated epoch's train top-1), or None."""
    if d.still_rising_since is None:
        return None
    val_top1, train_top1 = metrics["val_top1"], metrics["train_top1"]
    evaluated = np.flatnonzero(~np.isnan(val_top1))
    start = int(np.flatnonzero(metrics["epoch"] == d.still_rising_since)[0])
    return float(val_top1[evaluated[-1]] - val_top1[start]), float(train_top1[evaluated[-1]])


def diagnose(metrics: dict[str, np.ndarray], num_classes: int) -> Diagnosis:
    """Read a run's per-epoch metrics (``read_metrics``) into a ``Diagnosis``."""
    epochs = metrics["epoch"]
    val_top1, train_top1 = metrics["val_top1"], metrics["train_top1"]
    evaluated = np.flatnonzero(~np.isnan(val_top1))
    best = int(evaluated[np.argmax(val_top1[evaluated])]) if len(evaluated) else None
    last = int(evaluated[-1]) if len(evaluated) else None
    rising = _val_loss_rising_since(metrics)
    max_train = float(np.nanmax(train_top1)) if len(train_top1) and not np.isnan(train_top1).all() else math.nan
    not_learning = bool(len(train_top1)) and not max_train > chance_threshold(num_classes)
    guess = math.log(num_classes) if num_classes > 1 else math.nan
    off = [i for i in evaluated if metrics["val_loss"][i] > EVAL_MODE_LOSS_RATIO * guess
           and metrics["train_loss"][i] > 0.5 * guess and train_top1[i] > chance_threshold(num_classes)]
    diagnosis = Diagnosis(
        epochs=len(epochs),
        best_epoch=int(epochs[best]) if best is not None else None,
        best_val_top1=_value_at(val_top1, best),
        gap_at_best=_value_at(train_top1, best) - _value_at(val_top1, best),
        gap_at_last=_value_at(train_top1, last) - _value_at(val_top1, last),
        val_loss_rising_since=rising,
        not_learning=not_learning,
        still_rising_since=None if not_learning else _still_rising_since(metrics, evaluated),
        eval_mode_off_at=int(epochs[off[-1]]) if off else None,
    )
    diagnosis.sentences = _sentences(diagnosis, max_train, num_classes, metrics)
    diagnosis.flags = _sanity_flags(metrics, evaluated)
    return diagnosis


def eval_mode_losses(d: Diagnosis, metrics: dict[str, np.ndarray], num_classes: int) -> tuple[float, float, float] | None:
    """(val loss, train loss, a uniform guess's loss) at ``d.eval_mode_off_at``, or None."""
    if d.eval_mode_off_at is None:
        return None
    i = int(np.flatnonzero(metrics["epoch"] == d.eval_mode_off_at)[0])
    return float(metrics["val_loss"][i]), float(metrics["train_loss"][i]), math.log(num_classes)


def eval_mode_sentence(d: Diagnosis, metrics: dict[str, np.ndarray], num_classes: int) -> str | None:
    """'val loss 290.1 at epoch 1, 126x a uniform guess's (2.30), with train loss 3.22: ...' or None."""
    losses = eval_mode_losses(d, metrics, num_classes)
    if losses is None:
        return None
    val, train, guess = losses
    return (f"val loss {val:.1f} at epoch {d.eval_mode_off_at}, {val / guess:.0f}x a uniform guess's ({guess:.2f}), "
            f"with train loss {train:.2f}: the eval-mode network is far from the training one, not overfit "
            f"({EVAL_MODE_CAUSE}, as after few steps)")


def _sentences(d: Diagnosis, max_train: float, num_classes: int, metrics: dict[str, np.ndarray]) -> list[str]:
    if d.best_epoch is None:
        return ["no epoch was evaluated on the val split"]
    out = []
    if d.val_loss_rising_since is not None:
        out.append(f"val loss rising since epoch {d.val_loss_rising_since}; best top-1 at epoch {d.best_epoch}")
    else:
        out.append(f"best top-1 {d.best_val_top1:.1%} at epoch {d.best_epoch} of {d.epochs}")
    out.append(f"train-val top-1 gap {d.gap_at_best:+.1%} at the best epoch, {d.gap_at_last:+.1%} at the last")
    if d.not_learning:
        out.append(f"not learning: train top-1 never above {max_train:.1%} "
                   f"(chance is {1 / num_classes:.1%} for {num_classes} classes)")
    rising = still_rising_gain(d, metrics)
    if rising:
        out.append(f"still improving when it stopped: val top-1 {rising[0]:+.1%} since epoch {d.still_rising_since}, "
                   f"ending at its best (train top-1 {rising[1]:.1%}): under-trained, more epochs would raise it")
    eval_mode = eval_mode_sentence(d, metrics, num_classes)
    if eval_mode:
        out.append(eval_mode)
    return out


def _sanity_flags(metrics: dict[str, np.ndarray], evaluated: np.ndarray) -> list[str]:
    flags = []
    # val columns are empty (NaN) on epochs without a val pass; train_loss is never legitimately NaN.
    for name, allowed_nan in (("train_loss", False), ("val_loss", True)):
        column = metrics[name]
        bad = np.flatnonzero(np.isinf(column) | (np.isnan(column) & (not allowed_nan)))
        if len(bad):
            flags.append(f"{name} is {column[bad[0]]} at epoch {int(metrics['epoch'][bad[0]])}")
    if len(evaluated):
        margin = metrics["val_top1"][evaluated] - metrics["train_top1"][evaluated]
        worst = int(np.nanargmax(margin)) if not np.isnan(margin).all() else None
        if worst is not None and margin[worst] > VAL_ABOVE_TRAIN_MARGIN:
            i = evaluated[worst]
            flags.append(
                f"val top-1 {metrics['val_top1'][i]:.1%} is {margin[worst]:.1%} above train top-1 "
                f"{metrics['train_top1'][i]:.1%} at epoch {int(metrics['epoch'][i])}: check that val is not "
                f"leaking into train, or that train accuracy is measured on the same labels")
    return flags


def identical_results(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("val_top1", "val_loss")) -> list[str]:
    """Flags for runs of different models whose results agree to 1e-9: a copied checkpoint or a bug."""
    flags = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a.get("model") == b.get("model"):
                continue
            values = [(a.get(k), b.get(k)) for k in keys]
            if all(isinstance(x, (int, float)) and isinstance(y, (int, float)) and not math.isnan(x)
                   and abs(x - y) <= 1e-9 for x, y in values):
                flags.append(f"{a.get('run')} ({a.get('model')}) and {b.get('run')} ({b.get('model')}) have "
                             f"identical {' and '.join(keys)}: different models should not agree exactly")
    return flags
