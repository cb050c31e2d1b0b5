"""Published numbers beside ours: one row per experiment, mean +- std over the seeds that finished.

Our number for a row is taken the way the report took its own: ``final`` rows use the run's
final values (``summary.json``: the last epoch, with test-time augmentation when the recipe asks
for it), ``best`` rows (peaks read off a curve) use ``metrics.csv`` at the run's best epoch; a
metric the report gave at the other epoch (``best; train_top1=final``) is taken at that one.

Only folders whose ``recipe.yaml`` is the planned recipe count: the report re-plans every
experiment of the study folder with the current options, and a folder finished earlier with
other ones (another ``--scale``, say) is left out of the numbers and named in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnbench.evaluate.diagnostics import Diagnosis, diagnose
from cnnbench.evaluate.runs import read_classes, read_metrics, read_recipe, read_summary
from cnnbench.studies.catalog import PUBLISHED_METRICS, PublishedRow, Study
from cnnbench.studies.runner import recipe_differences

if TYPE_CHECKING:
    from cnnbench.studies.runner import PlannedRun

# Metrics compared with the report, in table order; train_top1 only where a report printed it.
COMPARED = PUBLISHED_METRICS


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over ``n`` seeds (std is NaN for one seed)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
        if not len(array):
            return cls(math.nan, math.nan, 0)
        return cls(float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan, len(array))

    def text(self, percent: bool = True) -> str:
        """'24.51 ± 0.32 (n=3)' in percent, or in raw units for losses."""
        if self.n == 0:
            return ""
        scale, digits = (100.0, 2) if percent else (1.0, 3)
        spread = f" ± {self.std * scale:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean * scale:.{digits}f}{spread} (n={self.n})"


@dataclass
class SeedRun:
    """One finished run of an experiment: its summary, curves and the values we compare."""

    seed: int
    run_dir: Path
    summary: dict[str, Any]
    metrics: dict[str, np.ndarray]
    values: dict[str, float]
    diagnosis: Diagnosis
    num_classes: int


@dataclass
class ExperimentResult:
    """One row of the study table: the published numbers and ours."""

    experiment: str
    label: str
    dataset: str
    model: str
    epochs: int
    """Epochs we trained: the longest finished seed's ``summary.json`` (early stopping may end a run
    before the recipe's count), else the plan's (after --scale)."""
    full_epochs: int
    """Epochs of the recipe as the report ran it."""
    compare: str
    """The row's epoch ('final' or 'best'); ``compare_for`` gives a metric's own."""
    published: PublishedRow | None
    runs: list[SeedRun] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    """Finished run folders not counted, with why ('left out: <folder> holds another recipe (<key> differs)')."""
    pretrained: bool = False
    """Fine-tuned from pretrained weights (aalto19's Table 3 rows) rather than trained from scratch."""

    @property
    def ours(self) -> bool:
        return self.published is None

    def compare_for(self, metric: str) -> str:
        return self.published.compare_for(metric) if self.published else self.compare

    @property
    def compare_text(self) -> str:
        return self.published.compare_text if self.published else self.compare

    def stat(self, metric: str) -> Stat:
        return Stat.of([r.values.get(metric, math.nan) for r in self.runs])

    def summary_stat(self, key: str) -> Stat:
        return Stat.of([_number(r.summary.get(key)) for r in self.runs])

    def difference(self, metric: str = "val_top1") -> float:
        """Ours minus published (fractions); NaN when either is missing."""
        if self.published is None or metric not in self.published.values:
            return math.nan
        return self.stat(metric).mean - self.published.values[metric]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def compared_values(summary: dict[str, Any], metrics: dict[str, np.ndarray], compare: str,
                    per_metric: dict[str, str] | None = None) -> dict[str, float]:
    """The values a published row is compared with: final (summary.json) or at the best epoch
    (metrics.csv); ``per_metric`` names metrics taken at the other one."""
    best_epoch = summary.get("best_epoch")
    rows = np.flatnonzero(metrics["epoch"] == best_epoch) if best_epoch is not None else []

    def value(metric: str) -> float:
        if (per_metric or {}).get(metric, compare) == "final":
            return _number(summary.get(metric))
        return float(metrics[metric][rows[0]]) if len(rows) else math.nan

    return {m: value(m) for m in COMPARED}


def load_seed_run(run_dir: Path, seed: int, compare: str, per_metric: dict[str, str] | None = None) -> SeedRun | None:
    """A finished run folder as a ``SeedRun``; None when it has not finished."""
    if not (run_dir / "summary.json").exists():
        return None
    summary = read_summary(run_dir)
    if summary.get("status") != "finished":
        return None
    metrics = read_metrics(run_dir)
    num_classes = len(read_classes(run_dir))
    return SeedRun(seed, run_dir, summary, metrics, compared_values(summary, metrics, compare, per_metric),
                   diagnose(metrics, num_classes), num_classes)


def collect_results(study: Study, plan: list[PlannedRun], failures: dict[tuple[str, int], str]) -> list[ExperimentResult]:
    """Join the plan's run folders with the published rows, one ``ExperimentResult`` per experiment."""
    results: dict[str, ExperimentResult] = {}
    for run in plan:
        full = study.recipe(run.experiment)
        published = study.published.get(run.experiment)
        compare = published.compare if published else "final"
        result = results.setdefault(run.experiment, ExperimentResult(
            experiment=run.experiment, label=study.label(run.experiment), dataset=run.recipe.data.name,
            model=run.recipe.model.name, epochs=run.recipe.train.epochs, full_epochs=full.train.epochs,
            compare=compare, published=published, pretrained=bool(run.recipe.model.pretrained)))
        seed_run = load_seed_run(run.run_dir, run.seed, compare, published.compare_metric if published else None)
        differing = recipe_differences(run.recipe.to_dict(), read_recipe(run.run_dir)) if seed_run else []
        if differing:
            result.left_out.append(f"left out: {run.run_dir} holds another recipe ({differing[0]} differs)")
        elif seed_run is not None:
            result.runs.append(seed_run)
        elif (run.experiment, run.seed) in failures:
            result.failures.append(f"seed {run.seed}: {failures[(run.experiment, run.seed)]}")
    for result in results.values():
        trained = [int(s.summary["epochs"]) for s in result.runs if s.summary.get("epochs") is not None]
        if trained:
            result.epochs = max(trained)
    return list(results.values())
