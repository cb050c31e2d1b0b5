"""``cnnbench compare``: one row per run, mean +- std over seeds, paired tests, sanity flags.

A comparison is a join over the files runs already hold: ``summary.json``, ``metrics.csv``,
``recipe.yaml`` and the evaluation rows and per-image predictions under ``evaluate/``. The val
numbers come from ``evaluate/<tag>.json`` when the run was evaluated (best checkpoint), else
from ``metrics.csv`` at the best epoch (the epoch the best checkpoint was saved at: summary.json's
``best_epoch``, chosen by ``train.monitor``; the highest val top-1 for a run without one).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.diagnostics import EVAL_MODE_CAUSE, Diagnosis, diagnose, identical_results
from cnnbench.evaluate.results import read_predictions
from cnnbench.evaluate.runs import (
    EVALUATE_DIR, is_run_folder, read_classes, read_evaluations, read_metrics, read_recipe, read_summary,
    recipe_without_seed_hash, write_csv, write_json, write_text,
)
from cnnbench.evaluate.significance import mcnemar
from cnnbench.report.tables import Column, Table, integer, number, percent, text

COMPARE_FILE = "compare.json"

ROW_COLUMNS = [
    Column("name", "run"), Column("model", "model"), Column("seed", "seed"),
    Column("val_top1", "val top-1 %", percent), Column("val_top5", "val top-5 %", percent),
    Column("val_loss", "val loss", number(3)), Column("params", "params", integer),
    Column("mflops", "MFLOPs", number(1)), Column("epochs", "epochs", integer),
    Column("s_per_epoch", "s/epoch", number(1)), Column("images_per_s", "img/s", number(0)),
    Column("best_epoch", "best epoch", integer), Column("gap_best", "gap@best %", percent),
    Column("gap_last", "gap@last %", percent), Column("source", "val from"),
]
GROUP_COLUMNS = [
    Column("recipe", "recipe"), Column("n", "seeds", integer),
    Column("val_top1", "val top-1 % (mean ± std)"), Column("val_top5", "val top-5 % (mean ± std)"),
    Column("val_loss", "val loss (mean ± std)"), Column("runs", "runs"),
]
TEST_COLUMNS = [
    Column("a", "A"), Column("b", "B"), Column("images", "images", integer),
    Column("a_top1", "A top-1 %", percent), Column("b_top1", "B top-1 %", percent),
    Column("a_only", "A right, B wrong", integer), Column("b_only", "B right, A wrong", integer),
    Column("p_value", "p", lambda p: f"{p:.3g}"), Column("method", "test", text),
]


@dataclass
class RunView:
    """Everything compare and report need from one run (or ensemble) folder."""

    path: Path
    row: dict[str, Any]
    metrics: dict[str, np.ndarray] | None
    diagnosis: Diagnosis | None
    recipe_key: str | None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)


def _epoch_index(metrics: dict[str, np.ndarray] | None, epoch: int | None) -> int | None:
    """Row of ``epoch`` in metrics.csv, if it is there."""
    if metrics is None or epoch is None:
        return None
    rows = np.flatnonzero(metrics["epoch"] == epoch)
    return int(rows[0]) if len(rows) else None


def _best_epoch(summary: dict[str, Any], metrics: dict[str, np.ndarray] | None,
                diagnosis: Diagnosis | None) -> int | None:
    """The epoch best.pt holds: summary.json's ``best_epoch`` (``train.monitor``'s choice — under
    val_loss not necessarily the highest top-1), else the epoch of the highest val top-1."""
    chosen = summary.get("best_epoch")
    if chosen is not None and _epoch_index(metrics, chosen) is not None:
        return int(chosen)
    return diagnosis.best_epoch if diagnosis is not None else None


def _val_from(run: Path, tag: str, metrics: dict[str, np.ndarray] | None, best_epoch: int | None,
              evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if tag in evaluations:
        e = evaluations[tag]
        return {"val_top1": e.get("top1"), "val_top5": e.get("top5"), "val_loss": e.get("loss"), "source": f"evaluate/{tag}"}
    i = _epoch_index(metrics, best_epoch)
    if i is not None:
        return {"val_top1": float(metrics["val_top1"][i]), "val_top5": float(metrics["val_top5"][i]),
                "val_loss": float(metrics["val_loss"][i]), "source": "metrics@best"}
    raise CnnbenchError(f"{run}: no val numbers (no {EVALUATE_DIR}/{tag}.json and no evaluated epoch in metrics.csv)")


def load_run_view(path: Path, tag: str = "val") -> RunView:
    """Collect a run folder's row for comparison tables."""
    path = Path(path)
    if not path.is_dir() or not is_run_folder(path):
        raise CnnbenchError(f"{path}: not a run folder (expected summary.json, metrics.csv or {EVALUATE_DIR}/)")
    summary = read_summary(path) if (path / "summary.json").exists() else {}
    metrics = read_metrics(path) if (path / "metrics.csv").exists() else None
    evaluations = read_evaluations(path)
    num_classes = len(read_classes(path)) if (path / "classes.json").exists() else None
    diagnosis = diagnose(metrics, num_classes) if metrics is not None and num_classes else None
    recipe = read_recipe(path)
    first_eval = evaluations.get(tag, next(iter(evaluations.values()), {}))
    best_epoch = _best_epoch(summary, metrics, diagnosis)
    best = _epoch_index(metrics, best_epoch)
    row = {
        "run": str(path), "name": summary.get("name") or first_eval.get("name") or path.name,
        "model": summary.get("model") or first_eval.get("model", ""), "dataset": summary.get("dataset") or first_eval.get("dataset", ""),
        "seed": summary.get("seed"), "params": summary.get("params", first_eval.get("params")),
        "mflops": summary.get("mflops", first_eval.get("mflops")),
        "epochs": len(metrics["epoch"]) if metrics is not None else summary.get("epochs"),
        "s_per_epoch": float(np.nanmean(metrics["epoch_seconds"])) if metrics is not None and len(metrics["epoch"]) else None,
        "images_per_s": summary.get("images_per_s"),
        "best_epoch": best_epoch,
        "gap_best": float(metrics["train_top1"][best] - metrics["val_top1"][best]) if best is not None else None,
        "gap_last": diagnosis.gap_at_last if diagnosis else None,
    }
    row.update(_val_from(path, tag, metrics, best_epoch, evaluations))
    return RunView(path, row, metrics, diagnosis, recipe_without_seed_hash(recipe) if recipe else None, evaluations)


def _mean_std(values: list[float], scale: float, digits: int) -> str:
    values = np.asarray(values, dtype=np.float64) * scale
    std = values.std(ddof=1) if len(values) > 1 else math.nan
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def seed_groups(runs: list[RunView]) -> list[dict[str, Any]]:
    """Mean +- sample std over runs sharing a recipe except for the seed (groups of two or more)."""
    groups: dict[str, list[RunView]] = {}
    for run in runs:
        if run.recipe_key is not None:
            groups.setdefault(run.recipe_key, []).append(run)
    out = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        name = re.sub(r"[-_]?(seed|s)\d+$", "", str(members[0].row["name"]))
        out.append({
            "recipe": name, "recipe_hash": key, "n": len(members),
            "val_top1": _mean_std([m.row["val_top1"] for m in members], 100, 2),
            "val_top5": _mean_std([m.row["val_top5"] for m in members], 100, 2),
            "val_loss": _mean_std([m.row["val_loss"] for m in members], 1, 3),
            "runs": " ".join(str(m.row["name"]) for m in members),
        })
    return out


def paired_tests(runs: list[RunView], tag: str = "val") -> list[dict[str, Any]]:
    """McNemar's test for every pair of runs whose ``tag`` predictions cover the same images."""
    # Only beside its row: write_evaluation removes the row first and writes it last, so predictions
    # without one are from an interrupted re-evaluation, not the evaluation the table's numbers are from.
    predictions = {i: read_predictions(r.path, tag) for i, r in enumerate(runs)
                   if tag in r.evaluations and (r.path / EVALUATE_DIR / f"{tag}_predictions.npz").exists()}
    tests = []
    keys = sorted(predictions)
    for x, i in enumerate(keys):
        for j in keys[x + 1:]:
            a, b = predictions[i], predictions[j]
            if a.files.shape != b.files.shape or not (np.array_equal(a.files, b.files) and np.array_equal(a.labels, b.labels)):
                continue  # not the same images: a paired test does not apply
            result = mcnemar(a.correct, b.correct)
            tests.append({"a": runs[i].row["name"], "b": runs[j].row["name"], "images": result.n,
                          "a_top1": float(a.correct.mean()), "b_top1": float(b.correct.mean()),
                          "a_only": result.a_only, "b_only": result.b_only,
                          "p_value": result.p_value, "method": result.method})
    return tests


@dataclass
class Comparison:
    """The joined table, the seed groups, the paired tests and the sanity flags."""

    runs: list[RunView]
    tag: str
    groups: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    flags: list[str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r.row for r in self.runs]

    def markdown(self) -> str:
        """The comparison as a Markdown document (tables and flags)."""
        parts = [f"# Comparison of {len(self.runs)} runs (val numbers from `{self.tag}`)", "",
                 Table(ROW_COLUMNS, self.rows).markdown()]
        if self.groups:
            parts += ["", "## Mean ± std over seeds (sample std)", "", Table(GROUP_COLUMNS, self.groups).markdown()]
        if self.tests:
            parts += ["", "## Paired McNemar tests (same images)", "", Table(TEST_COLUMNS, self.tests).markdown()]
        if self.flags:
            parts += ["", "## Sanity flags", ""] + [f"- {flag}" for flag in self.flags]
        return "\n".join(parts) + "\n"


def build_comparison(paths: list[Path], tag: str = "val") -> Comparison:
    """Join the given run folders into a ``Comparison``."""
    if not paths:
        raise CnnbenchError("compare: give at least one run folder")
    resolved = [Path(p).resolve() for p in paths]
    twice = next((p for p, path in zip(paths, resolved) if resolved.count(path) > 1), None)
    if twice is not None:  # it would form a seed group with itself (std 0) and be tested against itself
        raise CnnbenchError(f"compare: {twice} is given more than once; name each run once")
    runs = [load_run_view(Path(p), tag) for p in paths]
    flags = identical_results([r.row for r in runs])
    for run in runs:
        if run.diagnosis is not None:
            flags += [f"{run.row['name']}: {flag}" for flag in run.diagnosis.flags]
            if run.diagnosis.not_learning:
                flags.append(f"{run.row['name']}: not learning (train top-1 near chance)")
            if run.diagnosis.eval_mode_off_at is not None:
                flags.append(f"{run.row['name']}: eval-mode network far from the training one at epoch "
                             f"{run.diagnosis.eval_mode_off_at} (val loss many times a uniform guess's, train loss "
                             f"not; {EVAL_MODE_CAUSE})")
    return Comparison(runs, tag, seed_groups(runs), paired_tests(runs, tag), flags)


def write_comparison(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Write compare.md, compare.csv, seeds.csv, mcnemar.csv and compare.json into ``out``."""
    out = Path(out)
    columns = ["run", "name", "model", "dataset", "seed", "val_top1", "val_top5", "val_loss", "params", "mflops",
               "epochs", "s_per_epoch", "images_per_s", "best_epoch", "gap_best", "gap_last", "source"]
    paths = {"csv": write_csv(out / "compare.csv", comparison.rows, columns)}
    # An earlier comparison's seeds.csv / mcnemar.csv in the same folder would read as this one's.
    for key, name, rows in (("seeds", "seeds.csv", comparison.groups), ("mcnemar", "mcnemar.csv", comparison.tests)):
        if rows:
            paths[key] = write_csv(out / name, rows)
        else:
            (out / name).unlink(missing_ok=True)
    paths["markdown"] = write_text(out / "compare.md", comparison.markdown())
    paths["json"] = write_json(out / COMPARE_FILE, {
        "tag": comparison.tag, "runs": [str(r.path.resolve()) for r in comparison.runs], "rows": comparison.rows,
        "groups": comparison.groups, "tests": comparison.tests, "flags": comparison.flags})
    return paths
