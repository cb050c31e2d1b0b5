"""The study report's reading: one paragraph, built from the numbers, on where and why ours differ.

Every sentence is conditional on a measured quantity (a gap, a rank agreement, a diagnosis of
the curves, the epochs and images actually used), so the paragraph changes with the results
instead of repeating a template. The causes named are the ones the run folders can show:
fewer epochs (``--scale``), fewer training images than the report had, curves that peaked early
(the last epoch is then below the best), runs that did not learn, and the seed-to-seed spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from cnnbench.evaluate.diagnostics import EVAL_MODE_CAUSE, eval_mode_losses, still_rising_gain
from cnnbench.studies.results import ExperimentResult, compared_values

# Training images per class in the official datasets the reports trained on (Tiny ImageNet
# 100,000 / 200 classes; CIFAR-10 50,000 / 10; MNIST 60,000 / 10, about 6,000 per digit).
OFFICIAL_TRAIN_PER_CLASS = {"tiny-imagenet": 500, "cifar10": 5000, "mnist": 6000}
OFFICIAL_CLASSES = {"tiny-imagenet": 200, "cifar10": 10, "mnist": 10}
# Gaps smaller than this (in top-1 points) are called a match, not a difference: reports 000 and
# 003 print whole percents (+-0.5 points of rounding) and a re-seeded run moves by about as much
# again, so a smaller gap says nothing about the recipe.
MATCH_POINTS = 2.0
# A train-val top-1 gap this large at the last epoch is named as overfitting in the reading.
OVERFIT_POINTS = 10.0


@dataclass(frozen=True)
class StudyConditions:
    """How our runs differed from the report's, as numbers."""

    scale: float
    train_per_class: dict[str, float]
    """Dataset -> training images per class we actually used (absent when unknown)."""


def _points(fraction: float) -> float:
    return 100.0 * fraction


def _pct(fraction: float) -> str:
    return f"{_points(fraction):.1f}%"


def _ours_text(r: ExperimentResult) -> str:
    stat = r.stat("val_top1")
    spread = f" ± {_points(stat.std):.1f}" if stat.n > 1 else ""
    return f"{_points(stat.mean):.1f}%{spread} ({stat.n} seed{'s' if stat.n != 1 else ''})"


def _published_text(r: ExperimentResult) -> str:
    relation = {"=": "", "~": "about ", "<": "below "}[r.published.relation]
    return f"{relation}{_pct(r.published.values['val_top1'])}"


def _ranking_sentence(rows: list[ExperimentResult]) -> str | None:
    """How often ours orders two rows of the same dataset as the report did, and whether the best rows agree."""
    pairs = [(a, b) for a, b in combinations(rows, 2)
             if a.dataset == b.dataset and a.published.values["val_top1"] != b.published.values["val_top1"]]
    if len(pairs) < 3:
        return None
    agree = sum((a.published.values["val_top1"] - b.published.values["val_top1"])
                * (a.stat("val_top1").mean - b.stat("val_top1").mean) > 0 for a, b in pairs)
    disagreements = []
    for dataset in sorted({r.dataset for r in rows}):
        group = [r for r in rows if r.dataset == dataset]
        best_theirs = max(group, key=lambda r: r.published.values["val_top1"])
        best_ours = max(group, key=lambda r: r.stat("val_top1").mean)
        if best_theirs is not best_ours:
            disagreements.append(f"the report's best {dataset} row ({best_theirs.label}) is not ours ({best_ours.label})")
    first = ("and both put the same row first" + (" on every dataset" if len({r.dataset for r in rows}) > 1 else "")
             if not disagreements else "but " + "; ".join(disagreements))
    return f"The order of the rows agrees on {agree} of {len(pairs)} pairs, {first}."


def _level_sentence(rows: list[ExperimentResult]) -> str:
    diffs = np.array([_points(r.difference()) for r in rows])
    direction = "below" if diffs.mean() < 0 else "above"
    if np.all(np.abs(diffs) < MATCH_POINTS):
        return (f"All {len(rows)} reproduced rows land within {MATCH_POINTS:g} points of the published top-1 "
                f"(mean difference {diffs.mean():+.1f}).")
    return (f"Over the {len(rows)} reproduced rows our top-1 is on average {abs(diffs.mean()):.1f} points "
            f"{direction} the published numbers (from {diffs.min():+.1f} to {diffs.max():+.1f}).")


def _gap_sentences(rows: list[ExperimentResult], conditions: StudyConditions) -> list[str]:
    """The two largest gaps, each with what its curves say about it."""
    out = []
    ranked = sorted(rows, key=lambda r: -abs(r.difference()))[:2]
    for position, r in enumerate(ranked):
        diff = _points(r.difference())
        if abs(diff) < MATCH_POINTS:
            break
        ours = r.stat("val_top1")
        why = []
        peaked = [s for s in r.runs if s.diagnosis.val_loss_rising_since is not None]
        if peaked:
            why.append(f"its val loss rose after epoch {peaked[0].diagnosis.val_loss_rising_since}")
        if r.compare == "final":
            best = float(np.mean([s.diagnosis.best_val_top1 for s in r.runs]))
            if _points(best - ours.mean) >= 1.0:
                why.append(f"its best epoch reached {_pct(best)}, {_points(best - ours.mean):.1f} points over the last")
        if any(s.diagnosis.not_learning for s in r.runs):
            why.append("train accuracy stayed near chance (it did not learn in the epochs it had)")
        rising = next((s for s in r.runs if s.diagnosis.still_rising_since is not None), None)
        if rising is not None:
            gain, train_last = still_rising_gain(rising.diagnosis, rising.metrics)
            fewer = _fewer_images(r.dataset, conditions)
            steps = (f"; with {fewer[0]:.0f} images per class against {fewer[1]} it took {fewer[0] / fewer[1]:.0%} "
                     f"of the report's optimiser steps per epoch" if fewer else "")
            why.append(f"it was still improving when it stopped (val top-1 {_points(gain):+.1f} points since epoch "
                       f"{rising.diagnosis.still_rising_since}, train top-1 {_pct(train_last)}: under-trained{steps})")
        off = next((s for s in r.runs if s.diagnosis.eval_mode_off_at is not None), None)
        if off is not None:  # then a large train-val gap is this, not overfitting
            val, train, guess = eval_mode_losses(off.diagnosis, off.metrics, off.num_classes)
            why.append(f"its eval-mode network was far from the training one (val loss {val:.1f}, {val / guess:.0f}x a "
                       f"uniform guess's, with train loss {train:.2f}: {EVAL_MODE_CAUSE}, as after few steps)")
        # Train top-1 and its gap over val from the epoch the row compares val top-1 at (the last,
        # or the best epoch for a row the report read off a curve's peak), so the sentence's
        # numbers agree even where the table takes the report's train accuracy at another epoch.
        at_epoch = [compared_values(s.summary, s.metrics, r.compare) for s in r.runs]
        train = float(np.mean([v["train_top1"] for v in at_epoch]))
        gap = float(np.mean([v["train_top1"] - v["val_top1"] for v in at_epoch]))
        if _points(gap) >= OVERFIT_POINTS and off is None:
            at = " at its best epoch" if r.compare == "best" else ""
            why.append(f"it fit its training images far better than val (train top-1 {_pct(train)}{at}, "
                       f"{_points(gap):.1f} points above val)")
        if r.epochs < r.full_epochs:
            why.append(f"it ran {r.epochs} of the report's {r.full_epochs} epochs")
        because = f"; {', '.join(why)}" if why else ""
        which = "The largest gap is" if position == 0 else "Next is"
        out.append(f"{which} {r.label}: {_ours_text(r)} against the published {_published_text(r)} "
                   f"({diff:+.1f} points{because}).")
    return out


def _bound_sentences(rows: list[ExperimentResult]) -> list[str]:
    out = []
    for r in rows:
        ours = r.stat("val_top1").mean
        bound = r.published.values["val_top1"]
        verdict = "consistent with" if ours < bound else "above"
        out.append(f"{r.label}: the report gives only an upper bound ({_pct(bound)}); ours at {_pct(ours)} is {verdict} it.")
    return out


def _fewer_images(dataset: str, conditions: StudyConditions) -> tuple[float, int] | None:
    """(ours, the report's) training images per class when we trained on clearly fewer, else None."""
    ours = conditions.train_per_class.get(dataset, math.nan)
    theirs = OFFICIAL_TRAIN_PER_CLASS.get(dataset)
    return (ours, theirs) if theirs and not math.isnan(ours) and ours < 0.95 * theirs else None


def _condition_sentence(rows: list[ExperimentResult], conditions: StudyConditions) -> str | None:
    parts = []
    if conditions.scale < 1.0:
        parts.append(f"every run trained {conditions.scale:g} of its epochs (--scale {conditions.scale:g})")
    for dataset in sorted({r.dataset for r in rows}):
        fewer = _fewer_images(dataset, conditions)
        if fewer:
            ours, theirs = fewer
            parts.append(f"on {dataset} we trained on {ours:.0f} images per class against the report's {theirs} "
                         f"({ours / theirs:.0%} of the data)")
        classes = {s.num_classes for r in rows if r.dataset == dataset for s in r.runs}
        official = OFFICIAL_CLASSES.get(dataset)
        if official and classes and classes != {official}:
            ours_classes = min(classes)
            parts.append(f"our {dataset} data has {ours_classes} classes (chance {1 / ours_classes:.1%}) against the "
                         f"report's {official} (chance {1 / official:.1%}), so accuracies are not on the same scale")
    if not parts:
        return None
    below = sum(r.difference() < 0 for r in rows)
    return (f"Part of the difference is by construction: {'; '.join(parts)}; "
            f"{below} of {len(rows)} rows are below the published value.")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks with ties sharing the mean of their positions (scipy.stats.rankdata's 'average', minus 1).

    Tied epochs are the rule here (skoltech22: ten rows at 20 epochs, one at 8), and ranking them
    in listing order would invent a correlation from the order of the table.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return np.bincount(group, weights=ranks)[group] / counts[group]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties (Pearson's r of the ranks)."""
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def _epochs_sentence(rows: list[ExperimentResult]) -> str | None:
    """When the rows trained for different lengths, whether the longer ones came closer."""
    epochs = np.array([r.epochs for r in rows], dtype=np.float64)
    if len(rows) < 3 or len(set(epochs)) < 2:
        return None
    diffs = np.array([_points(r.difference()) for r in rows])
    rho = _spearman(epochs, diffs)
    if abs(rho) < 0.5:
        return None
    trend = "gained on" if rho > 0 else "lost ground against"
    return (f"Rows that trained for more epochs {trend} the published numbers (rank correlation {rho:+.2f} "
            f"between epochs trained and ours minus published).")


def _seed_sentence(rows: list[ExperimentResult]) -> str | None:
    spreads = [(_points(r.stat("val_top1").std), r) for r in rows if r.stat("val_top1").n > 1]
    if not spreads:
        return None
    widest, r = max(spreads, key=lambda s: s[0])
    typical_gap = float(np.median([abs(_points(x.difference())) for x in rows]))
    compared = "smaller than" if widest < typical_gap else "as large as"
    return (f"Seed-to-seed spread is at most {widest:.1f} points ({r.label}), {compared} the median gap of "
            f"{typical_gap:.1f} points.")


def _data_gap(dataset: str, conditions: StudyConditions) -> str:
    """' (the report trained on 500 images per class, ours on 80)' when our training set was smaller, else ''."""
    fewer = _fewer_images(dataset, conditions)
    return f" (the report trained on {fewer[1]} images per class, ours on {fewer[0]:.0f})" if fewer else ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _time_text(ours: ExperimentResult, theirs: ExperimentResult) -> str:
    """' in 2.5% of its training time (7 s against 4.6 min)': "the same conditions" are the same data
    and epochs, not the same compute, and the two recipes' costs per epoch can differ 40-fold."""
    a, b = (r.summary_stat("seconds").mean for r in (ours, theirs))
    if not (a > 0 and b > 0):  # unknown (NaN) or empty
        return ""
    if abs(a - b) < 0.05 * b:
        share = "about the same"
    else:
        share = f"{100 * a / b:.2g}% of its" if a < b else f"{a / b:.2g}x its"
    return f" in {share} training time ({_duration(a)} against {_duration(b)})"


def _modern_sentences(results: list[ExperimentResult], conditions: StudyConditions) -> list[str]:
    out = []
    for ours in (r for r in results if r.ours and r.runs):
        theirs = [r for r in results if not r.ours and r.dataset == ours.dataset]
        # A from-scratch recipe is measured against the from-scratch rows, a fine-tuned one against
        # the fine-tuned rows (aalto19 has both kinds; its pretrained rows start from ImageNet).
        same_data = [r for r in theirs if r.pretrained == ours.pretrained]
        kind = ""
        if len(same_data) < len(theirs):
            kind = " fine-tuned from pretrained weights" if ours.pretrained else " trained from scratch"
        published = [r for r in same_data if "val_top1" in r.published.values and r.published.relation != "<"]
        reproduced = [r for r in same_data if r.runs]
        value = ours.stat("val_top1")
        parts = [f"Our {ours.experiment} recipe reached {_ours_text(ours)} on {ours.dataset} in {ours.epochs} "
                 f"epoch{'s' if ours.epochs != 1 else ''}"]
        if published:
            top = max(published, key=lambda r: r.published.values["val_top1"])
            gap = _points(value.mean - top.published.values["val_top1"])
            parts.append(f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} the best published row{kind} "
                         f"({top.label}, {_published_text(top)}){_data_gap(ours.dataset, conditions)}")
        if reproduced:
            top = max(reproduced, key=lambda r: r.stat("val_top1").mean)
            gap = _points(value.mean - top.stat("val_top1").mean)
            parts.append(f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} our best reproduction under the "
                         f"same conditions ({top.label}, {_ours_text(top)}){_time_text(ours, top)}")
        out.append(", ".join(parts) + ".")
    return out


def write_reading(results: list[ExperimentResult], conditions: StudyConditions) -> str:
    """One paragraph on where and why our numbers differ from the published ones."""
    rows = [r for r in results if not r.ours and r.runs and "val_top1" in r.published.values]
    exact = [r for r in rows if r.published.relation != "<"]
    missing = [r.label for r in results if not r.runs]
    sentences = []
    if exact:
        sentences.append(_level_sentence(exact))
        sentences += [s for s in (_condition_sentence(exact, conditions), _ranking_sentence(exact),
                                  _epochs_sentence(exact)) if s]
        sentences += _gap_sentences(exact, conditions)
        sentences += [s for s in (_seed_sentence(exact),) if s]
    else:
        sentences.append("No published row with a top-1 value has a finished run yet, so nothing is compared.")
    sentences += _bound_sentences([r for r in rows if r.published.relation == "<"])
    sentences += _modern_sentences(results, conditions)
    if missing:
        sentences.append(f"Not run or not finished: {', '.join(missing)}.")
    return " ".join(sentences)
