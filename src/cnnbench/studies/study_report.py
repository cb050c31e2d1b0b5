"""The study report: the report's numbers beside ours, curves, comparison, bubble chart, reading.

Written under ``OUT/report/``: ``report.html`` (self-contained) and ``report.md`` with
``figures/*.png``, ``published_vs_ours.csv`` (one row per experiment, every number on the page),
``results.json`` (the same plus every seed's values and run folder), and ``compare/`` (the
per-run comparison of ``cnnbench compare`` over every finished run). When ``--scale`` shrank the
epochs, the page title, a banner, every figure caption and every CSV row say so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from cnnbench.evaluate.runs import write_csv, write_json
from cnnbench.files import write_text
from cnnbench.report.compare import build_comparison, write_comparison
from cnnbench.report.figures import plot_bubbles, plot_curves, plot_val_overlay, short
from cnnbench.report.page import Page, write_page
from cnnbench.report.tables import Column, Table, integer, number, percent
from cnnbench.studies.reading import StudyConditions, write_reading
from cnnbench.studies.results import COMPARED, ExperimentResult, collect_results

if TYPE_CHECKING:
    from cnnbench.studies.runner import PlannedRun, StudyRun

TABLE_FILE = "published_vs_ours.csv"
RESULTS_FILE = "results.json"

TABLE_COLUMNS = [
    Column("label", "experiment"), Column("dataset", "dataset"), Column("epochs", "epochs (ours/report)"),
    Column("compare", "compared at"), Column("relation", "published is"),
    Column("published_val_top1", "published top-1 %", percent), Column("ours_val_top1", "ours top-1 % (mean ± std, n)"),
    Column("diff_val_top1", "Δ top-1 (points)", number(1)),
    Column("published_val_top5", "published top-5 %", percent), Column("ours_val_top5", "ours top-5 %"),
    Column("published_val_loss", "published loss", number(2)), Column("ours_val_loss", "ours loss"),
    Column("published_train_top1", "published train top-1 %", percent), Column("ours_train_top1", "ours train top-1 %"),
    Column("params", "params", integer), Column("mflops", "MFLOPs", number(1)),
    Column("s_per_epoch", "s/epoch", number(1)),
]


def scale_note(scale: float, train_per_class: int | None, overrides: tuple[str, ...] = ()) -> str:
    """The line every page and figure carries when the runs were shortened, subsampled or changed ('' if not)."""
    parts = []
    if scale != 1.0:
        parts.append(f"QUICK PASS at --scale {scale:g}: every experiment trained {scale:g} of its epochs")
    if train_per_class is not None:
        parts.append(f"--train-per-class {train_per_class}")
    if overrides:
        parts.append("every recipe changed by " + " ".join(f"--set {o}" for o in overrides))
    shortened = scale != 1.0 or train_per_class is not None
    return "; ".join(parts) + ("; not comparable with full-length numbers" if shortened else "")


def table_row(r: ExperimentResult, scale: float) -> dict[str, Any]:
    """One experiment's published and measured numbers as a flat row (fractions, as in metrics.csv)."""
    row: dict[str, Any] = {"experiment": r.experiment, "label": r.label, "dataset": r.dataset, "model": r.model,
                           "epochs": f"{r.epochs}/{r.full_epochs}" if r.published else f"{r.epochs}",
                           "compare": r.compare_text, "relation": r.published.relation if r.published else "",
                           "scale": scale, "seeds": len(r.runs)}
    for metric in COMPARED:
        stat = r.stat(metric)
        row[f"published_{metric}"] = r.published.values.get(metric) if r.published else None
        row[f"ours_{metric}_mean"] = stat.mean if stat.n else None
        row[f"ours_{metric}_std"] = stat.std if stat.n > 1 else None
        row[f"ours_{metric}"] = stat.text(percent=metric != "val_loss")
    diff = r.difference()
    row["diff_val_top1"] = None if math.isnan(diff) else 100.0 * diff
    for key in ("params", "mflops"):
        value = r.summary_stat(key)
        row[key] = value.mean if value.n else None
    seconds = [s.summary.get("seconds") for s in r.runs]
    epochs = [len(s.metrics["epoch"]) for s in r.runs]
    row["s_per_epoch"] = (float(np.mean([s / e for s, e in zip(seconds, epochs) if s and e]))
                          if any(s and e for s, e in zip(seconds, epochs)) else None)
    row["failures"] = " | ".join(r.failures)
    row["left_out"] = " | ".join(r.left_out)
    return row


def _mean_curves(r: ExperimentResult) -> dict[str, np.ndarray]:
    """Per-epoch metrics averaged over seeds, over the epochs every seed reached (early stopping
    can end one seed sooner; ``_curves_caption`` says so).

    Epochs without a val pass (``train.eval_every`` > 1) are NaN in every seed and stay NaN.
    """
    length = min(len(s.metrics["epoch"]) for s in r.runs)
    keys = [k for k in r.runs[0].metrics if all(k in s.metrics for s in r.runs)]
    out = {}
    for key in keys:
        stacked = np.stack([s.metrics[key][:length] for s in r.runs])
        counted = (~np.isnan(stacked)).sum(axis=0)
        total = np.nansum(stacked, axis=0)
        out[key] = np.divide(total, counted, out=np.full(total.shape, np.nan), where=counted > 0)
    return out


def _curves_caption(r: ExperimentResult) -> str:
    """'mean over 3 seeds', and which epochs when the seeds ran for different lengths."""
    lengths = [len(s.metrics["epoch"]) for s in r.runs]
    text = f"mean over {len(r.runs)} seed{'s' if len(r.runs) != 1 else ''}"
    if len(set(lengths)) > 1:
        text += f" for epochs 1-{min(lengths)}, the epochs every seed ran (the longest ran {max(lengths)})"
    return text


def _shared_best_epoch(r: ExperimentResult) -> int | None:
    """The best epoch when every seed had the same one (a line for one seed's best would mislabel the mean)."""
    best = {s.summary.get("best_epoch") for s in r.runs}
    return best.pop() if len(best) == 1 else None


def plot_published_vs_ours(rows: list[ExperimentResult]) -> Figure:
    """Our mean val top-1 (with seed std) against the published value; the diagonal is agreement."""
    fig = Figure(figsize=(6.5, 6))
    ax = fig.subplots()
    published = np.array([100 * r.published.values["val_top1"] for r in rows])
    ours = np.array([100 * r.stat("val_top1").mean for r in rows])
    spread = np.array([100 * np.nan_to_num(r.stat("val_top1").std) for r in rows])
    markers = {"=": "o", "~": "s", "<": "v"}
    for relation, marker in markers.items():
        shown = np.array([r.published.relation == relation for r in rows])
        if shown.any():
            ax.errorbar(published[shown], ours[shown], yerr=spread[shown], fmt=marker, capsize=3,
                        label={"=": "published", "~": "published (approximate)", "<": "published upper bound"}[relation])
    for x, y, r in zip(published, ours, rows):
        ax.annotate(short(r.experiment, 24), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    top = max(float(np.nanmax(np.concatenate([published, ours]))), 1.0) * 1.1
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="ours = published")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("published val top-1 (%)")
    ax.set_ylabel("ours val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _describe_study(page: Page, run: StudyRun) -> None:
    study = run.study
    meta = study.meta
    page.paragraph(f"Source: {study.source} — {meta.get('authors', 'authors not named')}"
                   f"{', ' + str(meta['year']) if meta.get('year') else ''}; {meta.get('framework', '')}.")
    page.paragraph(study.summary)
    page.bullets([f"Published numbers from: {', '.join(meta.get('tables', []))}"])
    if meta.get("unstated"):
        page.heading("Where the report is silent (our choices)", 3)
        page.bullets([str(x) for x in meta["unstated"]])
    if meta.get("caveats") or meta.get("needs"):
        page.heading("Caveats", 3)
        page.bullets([str(x) for x in meta.get("caveats", []) + meta.get("needs", [])])


def _add_figures(page: Page, results: list[ExperimentResult], note: str) -> None:
    suffix = f" ({note})" if note else ""
    compared = [r for r in results if not r.ours and r.runs and "val_top1" in r.published.values]
    if compared:
        page.figure("published_vs_ours", plot_published_vs_ours(compared),
                    f"Ours (mean ± std over seeds) against the published val top-1{suffix}")
    for dataset in sorted({r.dataset for r in results}):
        done = [r for r in results if r.dataset == dataset and r.runs]
        if not done:
            continue
        names = [r.experiment for r in done]
        page.figure(f"bubbles_{dataset}", plot_bubbles(
            names, np.array([r.stat("val_top1").mean for r in done]),
            np.array([r.summary_stat("params").mean for r in done]),
            np.array([r.summary_stat("mflops").mean for r in done])),
            f"{dataset}: our val top-1 against parameters and MFLOPs per image{suffix}")
        page.figure(f"curves_{dataset}", plot_val_overlay([(r.experiment, _mean_curves(r)) for r in done]),
                    f"{dataset}: val top-1 and loss per epoch, mean over seeds{suffix}")
    for r in (r for r in results if r.runs):
        page.figure(f"curves_{r.experiment}", plot_curves(_mean_curves(r), title=r.label, best_epoch=_shared_best_epoch(r)),
                    f"{r.label}: train and val curves, {_curves_caption(r)}{suffix}")


def build_study_page(run: StudyRun, results: list[ExperimentResult], rows: list[dict[str, Any]], reading: str) -> Page:
    """The study page: banner, the report, published vs ours, the reading, failures, folders left out, figures."""
    options = run.options
    note = scale_note(options.scale, options.train_per_class, options.overrides)
    page = Page(f"{run.study.title} — published vs cnnbench" + (f" — scale {options.scale:g}" if options.scale != 1 else ""))
    if note:
        page.bullets([note], css_class="flag")
    page.heading("The report")
    _describe_study(page, run)
    page.heading("Published vs ours")
    page.table(Table(TABLE_COLUMNS, rows))
    page.paragraph("Accuracies in percent on each dataset's validation split; Δ is ours minus published in points. "
                   "'final' rows compare the last epoch, 'best' rows (peaks the report read off its curves) the best epoch; "
                   "'best; train_top1=final' takes the train top-1 at the last epoch, where the report gave it. "
                   "'published is' = marks a number as printed, ~ one the report gave only approximately, "
                   "< an upper bound ('never reached 20%').")
    page.heading("Reading")
    page.paragraph(reading)
    failures = [f"{r.label}: {f}" for r in results for f in r.failures]
    if failures:
        page.heading("Runs that failed")
        page.bullets(failures, css_class="flag")
    left_out = [f"{r.label}: {why}" for r in results for why in r.left_out]
    if left_out:
        page.heading("Run folders left out (trained with other options)")
        page.bullets(left_out, css_class="flag")
    page.heading("Figures")
    _add_figures(page, results, note)
    return page


def write_study_report(run: StudyRun, plan: list[PlannedRun] | None = None) -> dict[str, Path]:
    """Collect every finished run of the study folder and write the report files under OUT/report."""
    plan = plan if plan is not None else []
    failures = {(o.planned.experiment, o.planned.seed): o.message for o in run.outcomes if not o.ok}
    results = collect_results(run.study, plan, failures)
    options = run.options
    rows = [table_row(r, options.scale) for r in results]
    conditions = StudyConditions(options.scale, dict(run.train_per_class))
    reading = write_reading(results, conditions)
    out = Path(run.out) / "report"
    paths = write_page(build_study_page(run, results, rows, reading), out)
    columns = list(rows[0]) if rows else []
    paths["table"] = write_csv(out / TABLE_FILE, rows, columns)
    paths["results"] = write_json(out / RESULTS_FILE, {
        "study": run.study.name, "title": run.study.title, "source": run.study.source,
        "scale": options.scale, "train_per_class": options.train_per_class, "seeds": options.seeds,
        "note": scale_note(options.scale, options.train_per_class, options.overrides), "reading": reading, "rows": rows,
        "runs": [{"experiment": r.experiment, "seed": s.seed, "run_dir": str(s.run_dir), "values": s.values}
                 for r in results for s in r.runs],
    })
    finished = [s.run_dir for r in results for s in r.runs]
    if finished:
        written = write_comparison(build_comparison(finished), out / "compare")
        note = scale_note(options.scale, options.train_per_class, options.overrides)
        if note:  # the per-run comparison is a page of this report too: it carries the same line
            write_text(written["markdown"], f"> {note}\n\n" + written["markdown"].read_text())
        paths.update({f"compare_{k}": v for k, v in written.items()})
    _remove_stale(out, paths.values())
    return paths


def _remove_stale(out: Path, written) -> None:
    """Delete the figures and comparison files an earlier report wrote and this one did not (the
    curves of a row now left out, the seeds table of an earlier --seeds), so no file of the report
    folder disagrees with its page."""
    kept = {Path(p).resolve() for p in written}
    for folder in (out / "figures", out / "compare"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if path.is_file() and path.resolve() not in kept:
                path.unlink()
