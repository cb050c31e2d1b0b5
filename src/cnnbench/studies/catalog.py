"""The shipped studies as data: ``study.yaml``, ``published.csv`` and one recipe per experiment.

A study is a folder under ``cnnbench/studies/`` named after the report it reproduces. Its
``study.yaml`` says where the report comes from and what it did; ``published.csv`` holds the
numbers the report printed (one row per experiment, accuracies as fractions); every other
``*.yaml`` is a training recipe (``cnnbench.train.config``) named after its experiment. Recipes
without a published row are ours (``modern``), shown beside the report's rows.
"""

from __future__ import annotations

import csv
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnbench.errors import CnnbenchError
from cnnbench.files import load_yaml
from cnnbench.train.config import Recipe, load_recipe, load_recipe_dict

STUDIES_DIR = Path(__file__).resolve().parent
STUDY_FILE = "study.yaml"
PUBLISHED_FILE = "published.csv"

# Published metric columns, in the units of metrics.csv / summary.json (fractions, nats).
PUBLISHED_METRICS = ("val_top1", "val_top5", "val_loss", "train_top1")
PUBLISHED_COLUMNS = ("experiment", "label", "compare", *PUBLISHED_METRICS, "relation", "source", "note")
# Which of our epochs a published number is compared with: the last one, or the best one
# (reports that quote a peak read off a curve). A row may name another epoch for one metric:
# "best; train_top1=final" (a peak val top-1 quoted beside the train accuracy "after 20 epochs").
COMPARE_MODES = ("final", "best")
# How exact the published number is: printed as is, read approximately off a figure or the text
# ("almost 22%"), or only an upper bound ("never reached 20%").
RELATIONS = ("=", "~", "<")
STUDY_KEYS = ("title", "source", "authors", "year", "framework", "dataset", "tables", "summary",
              "unstated", "caveats", "needs", "not_reproduced")


@dataclass(frozen=True)
class PublishedRow:
    """One experiment's numbers as the report printed them."""

    experiment: str
    label: str
    compare: str
    values: dict[str, float]
    """Metric name -> value; metrics the report did not give are absent."""
    relation: str
    source: str
    note: str
    compare_metric: dict[str, str] = field(default_factory=dict)
    """Metric -> compare mode, for the metrics the report gave at another epoch than ``compare``."""

    def compare_for(self, metric: str) -> str:
        """The epoch ('final' or 'best') this metric is compared at."""
        return self.compare_metric.get(metric, self.compare)

    @property
    def compare_text(self) -> str:
        """As written in published.csv: 'best', or 'best; train_top1=final'."""
        return "; ".join([self.compare, *(f"{m}={mode}" for m, mode in self.compare_metric.items())])


@dataclass
class Study:
    """One report's experiments: metadata, published numbers and recipe files."""

    name: str
    folder: Path
    title: str
    source: str
    summary: str
    datasets: list[str]
    meta: dict[str, Any]
    """Everything else in study.yaml (authors, year, framework, tables, unstated, caveats, ...)."""
    published: dict[str, PublishedRow]
    experiments: list[str] = field(default_factory=list)
    """Experiment names in report order (published rows first, then ours)."""

    def recipe_path(self, experiment: str) -> Path:
        """The recipe file of one experiment."""
        if experiment not in self.experiments:
            raise CnnbenchError(_unknown(f"study {self.name}: experiment", experiment, self.experiments))
        return self.folder / f"{experiment}.yaml"

    def recipe_values(self, experiment: str) -> dict[str, Any]:
        """The recipe of one experiment as a plain mapping (before validation)."""
        return load_recipe_dict(self.recipe_path(experiment))

    def recipe(self, experiment: str, overrides: list[str] | None = None) -> Recipe:
        """The validated recipe of one experiment."""
        return load_recipe(self.recipe_path(experiment), overrides)

    def label(self, experiment: str) -> str:
        """How the report names the experiment (ours: the recipe name)."""
        row = self.published.get(experiment)
        return row.label if row else f"{experiment} (cnnbench)"

    def is_ours(self, experiment: str) -> bool:
        """True for recipes with no published row (our own, e.g. ``modern``)."""
        return experiment not in self.published


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{what} {name!r} not found{hint}; known: {', '.join(known)}"


def list_studies(root: Path = STUDIES_DIR) -> list[str]:
    """Names of the study folders (those holding a study.yaml), sorted."""
    return sorted(p.parent.name for p in Path(root).glob(f"*/{STUDY_FILE}"))


def _parse_value(path: Path, line: int, column: str, text: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise CnnbenchError(f"{path}:{line}: {column}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise CnnbenchError(f"{path}:{line}: {column}: expected a finite number, got {text!r}")
    if column != "val_loss" and not 0.0 <= value <= 1.0:
        raise CnnbenchError(f"{path}:{line}: {column}: expected a fraction in [0, 1], got {text!r}")
    return value


def read_published(path: Path) -> dict[str, PublishedRow]:
    """Parse ``published.csv``; every row must carry at least one number."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            if header != PUBLISHED_COLUMNS:
                raise CnnbenchError(f"{path}: expected the columns {','.join(PUBLISHED_COLUMNS)}, got {','.join(header)}")
            rows: dict[str, PublishedRow] = {}
            for line, raw in enumerate(reader, start=2):
                row = _published_row(path, line, raw)
                if row.experiment in rows:
                    raise CnnbenchError(f"{path}:{line}: experiment {row.experiment!r} appears twice")
                rows[row.experiment] = row
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: file not found") from None
    return rows


def _compare_modes(path: Path, line: int, text: str) -> tuple[str, dict[str, str]]:
    """'best' or 'best; train_top1=final' -> ('best', {'train_top1': 'final'})."""
    row_mode, *overrides = [part.strip() for part in (text or "").split(";")]
    expected = f"one of {', '.join(COMPARE_MODES)}, optionally followed by '; METRIC=MODE'"
    if row_mode not in COMPARE_MODES:
        raise CnnbenchError(f"{path}:{line}: compare: expected {expected}, got {text!r}")
    per_metric = {}
    for item in overrides:
        metric, _, mode = (part.strip() for part in item.partition("="))
        if metric not in PUBLISHED_METRICS or mode not in COMPARE_MODES:
            raise CnnbenchError(f"{path}:{line}: compare: expected {expected} with METRIC one of "
                                f"{', '.join(PUBLISHED_METRICS)}, got {text!r}")
        per_metric[metric] = mode
    return row_mode, per_metric


def _published_row(path: Path, line: int, raw: dict[str, str]) -> PublishedRow:
    compare, compare_metric = _compare_modes(path, line, raw["compare"])
    if raw["relation"] not in RELATIONS:
        raise CnnbenchError(f"{path}:{line}: relation: expected one of {', '.join(RELATIONS)}, got {raw['relation']!r}")
    values = {}
    for column in PUBLISHED_METRICS:
        value = _parse_value(path, line, column, raw[column])
        if value is not None:
            values[column] = value
    if not values:
        raise CnnbenchError(f"{path}:{line}: row {raw['experiment']!r} has no published number")
    return PublishedRow(experiment=raw["experiment"], label=raw["label"], compare=compare,
                        values=values, relation=raw["relation"], source=raw["source"], note=raw["note"],
                        compare_metric=compare_metric)


def read_yaml_mapping(path: Path, expected: str) -> dict[str, Any]:
    """A YAML file holding one mapping; ``expected`` says what it should hold, for the error."""
    path = Path(path)
    try:
        value = load_yaml(path.read_text())
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: file not found") from None
    except OSError as exc:  # a folder given for a file, no permission
        raise CnnbenchError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise CnnbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict) or not value:
        raise CnnbenchError(f"{path}: expected {expected}")
    return value


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_yaml_mapping(path, f"a mapping with {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(meta) - set(STUDY_KEYS))
    if unknown:
        raise CnnbenchError(f"{path}: unknown keys {', '.join(unknown)}; valid keys: {', '.join(STUDY_KEYS)}")
    for key in ("title", "source", "dataset", "summary"):
        if not meta.get(key):
            raise CnnbenchError(f"{path}: missing {key!r}")
    return meta


def load_study(name: str, root: Path = STUDIES_DIR) -> Study:
    """Load one study folder: metadata, published rows, and its experiments in report order."""
    known = list_studies(root)
    if name not in known:
        raise CnnbenchError(_unknown("study", name, known))
    folder = Path(root) / name
    meta = _read_meta(folder / STUDY_FILE)
    published = read_published(folder / PUBLISHED_FILE)
    recipes = sorted(p.stem for p in folder.glob("*.yaml") if p.name != STUDY_FILE)
    missing = [e for e in published if e not in recipes]
    if missing:
        raise CnnbenchError(f"{folder / PUBLISHED_FILE}: no recipe file for {', '.join(missing)} (expected {missing[0]}.yaml)")
    datasets = meta["dataset"] if isinstance(meta["dataset"], list) else [meta["dataset"]]
    ours = [e for e in recipes if e not in published]
    return Study(
        name=name, folder=folder, title=str(meta["title"]), source=str(meta["source"]),
        summary=str(meta["summary"]).strip(), datasets=[str(d) for d in datasets],
        meta={k: v for k, v in meta.items() if k not in ("title", "source", "summary", "dataset")},
        published=published, experiments=list(published) + ours,
    )


def _recipe_line(recipe: Recipe) -> str:
    """The settings a reader compares first: data, model, optimiser, schedule, length."""
    o, s, t, d, m = recipe.optim, recipe.schedule, recipe.train, recipe.data, recipe.model
    pretrained = " pretrained" if m.pretrained else ""
    return (f"{d.name} {d.input_size or 'native'}px, {m.name}{pretrained}, {o.name} lr {o.lr:g}, "
            f"{s.name} schedule, batch {t.batch_size}, {t.epochs} epochs")


def _published_text(row: PublishedRow | None) -> str:
    if row is None:
        return "ours (no published row)"
    relation = {"=": "", "~": "~", "<": "<"}[row.relation]
    parts = [f"{k} {relation}{100 * v:.1f}%" if k != "val_loss" else f"{k} {v:.2f}" for k, v in row.values.items()]
    return f"published ({row.compare_text}, {row.source}): " + ", ".join(parts)


def describe_study(study: Study) -> str:
    """``cnnbench study show``: the source, what it did, our choices, and one line per experiment."""
    meta = study.meta
    lines = [f"{study.name}: {study.title}", f"source: {study.source} ({meta.get('authors', '')}, {meta.get('year') or 'year not stated'})",
             f"framework: {meta.get('framework', '')}", f"datasets: {', '.join(study.datasets)}",
             f"published in: {', '.join(meta.get('tables', []))}", "", study.summary, ""]
    for key, title in (("unstated", "where the report is silent (our choices)"), ("caveats", "caveats"), ("needs", "needs")):
        if meta.get(key):
            lines += [f"{title}:"] + [f"  - {item}" for item in meta[key]] + [""]
    lines.append("experiments:")
    for experiment in study.experiments:
        lines.append(f"  {experiment}: {study.label(experiment)}")
        lines.append(f"      {_recipe_line(study.recipe(experiment))}")
        lines.append(f"      {_published_text(study.published.get(experiment))}")
    return "\n".join(lines)
