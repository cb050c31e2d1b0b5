"""``cnnbench report``: the page for one run folder or for a comparison folder.

A run page shows the summary, the diagnostics in sentences, the training curves, every
evaluation row, and for the main evaluation the most-confused pairs, the confusion among the
worst classes, per-class accuracy, the most confident mistakes and top-5 guesses. A comparison
page (a folder written by ``cnnbench compare``) shows the joined table, seed groups, paired
tests, sanity flags, the accuracy-vs-cost bubble chart and the val curves of every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.metrics import top_confused_pairs, worst_classes
from cnnbench.evaluate.results import read_confusion, read_examples, read_predictions
from cnnbench.evaluate.runs import EVALUATE_DIR, read_classes, read_evaluations, read_json
from cnnbench.report import figures
from cnnbench.report.compare import (
    COMPARE_FILE, GROUP_COLUMNS, ROW_COLUMNS, TEST_COLUMNS, load_run_view,
)
from cnnbench.report.page import Page, write_page
from cnnbench.report.tables import Column, Table, integer, number, percent

EVALUATION_COLUMNS = [
    Column("tag", "evaluation"), Column("split", "split"), Column("tta", "TTA"), Column("checkpoint", "checkpoint"),
    Column("images", "images", integer), Column("loss", "loss", number(3)), Column("top1", "top-1 %", percent),
    Column("top5", "top-5 %", percent), Column("mean_class_top1", "mean class top-1 %", percent),
    Column("worst_class", "worst class"), Column("worst_class_top1", "its top-1 %", percent),
]
PAIR_COLUMNS = [Column("true", "true class"), Column("pred", "predicted as"), Column("count", "images", integer),
                Column("fraction", "% of the true class", percent)]
CONFUSED_PAIRS = 20
WORST_CLASSES = 20


def _main_tag(evaluations: dict[str, dict[str, Any]]) -> str | None:
    """The evaluation the detailed sections show: val, else test, else the first one."""
    for tag in ("val", "test"):
        if tag in evaluations:
            return tag
    return next(iter(evaluations), None)


def add_confusion_sections(page: Page, folder: Path, tag: str, names: list[str]) -> None:
    """Most-confused pairs (table), confusion among the worst classes, per-class accuracy."""
    confusion = read_confusion(folder, tag)
    totals = np.maximum(confusion.sum(axis=1), 1)
    per_class = np.where(confusion.sum(axis=1) > 0, np.diag(confusion) / totals, np.nan)
    page.heading(f"Where it goes wrong ({tag})")
    page.paragraph(f"The {CONFUSED_PAIRS} most-confused class pairs; the full {len(names)}x{len(names)} matrix is "
                   f"in {EVALUATE_DIR}/{tag}_confusion.npy (rows true, columns predicted).")
    pairs = [{"true": names[t], "pred": names[p], "count": n, "fraction": f}
             for t, p, n, f in top_confused_pairs(confusion, CONFUSED_PAIRS)]
    page.table(Table(PAIR_COLUMNS, pairs))
    worst = worst_classes(per_class, min(WORST_CLASSES, len(names)))
    # Columns: where the worst classes' images actually go. Among the worst classes alone the
    # matrix is nearly empty at 200 classes (their images land elsewhere).
    targets = np.argsort(-confusion[worst].sum(axis=0), kind="stable")[:len(worst)]
    page.figure(f"{tag}-confusion-worst", figures.plot_confusion_subset(
        confusion, names, worst, targets, f"the {len(worst)} worst classes (rows) and where their images go (%)"),
        f"Confusion of the {len(worst)} classes with the lowest top-1 ({tag}), against the {len(targets)} classes "
        "their images are most often predicted as")
    page.figure(f"{tag}-per-class", figures.plot_per_class(per_class, names),
                f"Per-class top-1: the worst and the best classes ({tag})")


def add_example_sections(page: Page, folder: Path, tag: str, names: list[str]) -> None:
    """The gallery of the most confident mistakes and the top-5 guesses for a fixed sample."""
    examples = read_examples(folder, tag)
    if examples is None:
        return
    predictions = read_predictions(folder, tag)
    if len(examples.mistake_index):
        m = examples.mistake_index
        page.figure(f"{tag}-mistakes", figures.plot_gallery(
            examples.mistake_images, [names[i] for i in predictions.labels[m]],
            [names[i] for i in predictions.top5[m, 0]], predictions.top5_prob[m, 0]),
            f"The most confident mistakes ({tag}): true and predicted class, predicted probability")
    s = examples.sample_index
    truth = [names[i] for i in predictions.labels[s]]
    page.figure(f"{tag}-top5", figures.plot_top5(
        examples.sample_images, [f"true: {t}" for t in truth],
        [[names[i] for i in row] for row in predictions.top5[s]], predictions.top5_prob[s], truth),
        f"Top-5 guesses with probabilities for a fixed sample of {tag} images (true class in green)")


def build_run_page(folder: Path) -> Page:
    """The report page of one run (or ensemble) folder."""
    tag = _main_tag(read_evaluations(folder))
    view = load_run_view(folder, tag or "val")
    names = [c.name for c in read_classes(folder)]
    page = Page(f"Run {view.row['name']}")
    page.table(Table(ROW_COLUMNS, [view.row]))
    if view.diagnosis is not None:
        page.heading("Diagnostics")
        page.bullets(view.diagnosis.sentences)
        page.bullets([f"sanity: {flag}" for flag in view.diagnosis.flags], css_class="flag")
        page.figure("curves", figures.plot_curves(view.metrics, str(view.row["name"]), view.row["best_epoch"]),
                    "Train vs val loss, top-1 and top-5 per epoch (dotted: best epoch)")
    evaluations = view.evaluations
    page.heading("Evaluations")
    if not evaluations:
        page.paragraph(f"Not evaluated yet: run `cnnbench evaluate {folder}` for the confusion matrix, "
                       "per-class accuracy and example galleries.")
        return page
    page.table(Table(EVALUATION_COLUMNS, [dict(row, tag=t) for t, row in evaluations.items()]))
    add_confusion_sections(page, Path(folder), tag, names)
    add_example_sections(page, Path(folder), tag, names)
    return page


def _number_column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) in (None, "") else float(r[key]) for r in rows], dtype=np.float64)


def build_compare_page(folder: Path) -> Page:
    """The report page of a comparison folder (``compare.json`` written by ``cnnbench compare``)."""
    data = read_json(Path(folder) / COMPARE_FILE)
    rows = data["rows"]
    page = Page(f"Comparison of {len(rows)} runs")
    page.paragraph(f"Val numbers from `{data['tag']}` where the run was evaluated, else from metrics.csv at the best "
                   "epoch (column 'val from'). Gaps are train minus val top-1.")
    page.table(Table(ROW_COLUMNS, rows))
    if data["groups"]:
        page.heading("Mean ± std over seeds")
        page.table(Table(GROUP_COLUMNS, data["groups"]))
    if data["tests"]:
        page.heading("Paired McNemar tests (same images)")
        page.table(Table(TEST_COLUMNS, data["tests"]))
    page.heading("Sanity flags")
    page.bullets(data["flags"] or ["none"], css_class="flag" if data["flags"] else "")
    page.figure("accuracy-vs-cost", figures.plot_bubbles(
        [r["name"] for r in rows], _number_column(rows, "val_top1"), _number_column(rows, "params"),
        _number_column(rows, "mflops")), "Val top-1 against parameters and against MFLOPs per image")
    views = [load_run_view(Path(p), data["tag"]) for p in data["runs"] if Path(p).is_dir()]
    curves = [(str(v.row["name"]), v.metrics) for v in views if v.metrics is not None]
    if curves:
        page.figure("val-curves", figures.plot_val_overlay(curves), "Val top-1 and val loss per epoch, every run")
        page.heading("Diagnostics per run")
        page.bullets([f"{v.row['name']}: {'; '.join(v.diagnosis.sentences)}" for v in views if v.diagnosis])
    return page


def write_report(folder: Path, out: Path | None = None) -> dict[str, Path]:
    """Build the page for a run or comparison folder; write HTML, Markdown and PNGs to ``out``."""
    folder = Path(folder)
    if (folder / COMPARE_FILE).exists():
        page = build_compare_page(folder)
    elif (folder / "classes.json").exists():
        page = build_run_page(folder)
    else:
        raise CnnbenchError(f"{folder}: expected a run folder (with classes.json) or a comparison folder "
                            f"(with {COMPARE_FILE} from `cnnbench compare --out`)")
    return write_page(page, out if out is not None else folder / "report")
