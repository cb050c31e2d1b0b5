"""Reading run folders: the files the training engine writes, as plain data.

The run-folder contract (docs/design.md): ``metrics.csv`` (one row per epoch), ``summary.json``
(one flat row), ``classes.json`` (``[{"id", "name"}]`` in label order), ``recipe.yaml`` and
``checkpoints/``. Everything here reads those files only, so diagnostics, comparisons and
reports work on a run folder without torch or the dataset.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnbench.errors import CnnbenchError
from cnnbench.files import load_yaml, write_atomic, write_text
from cnnbench.train.config import Recipe, build_config

METRICS_COLUMNS = ("epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1",
                   "val_top5", "lr", "epoch_seconds", "images_per_s")
EVALUATE_DIR = "evaluate"
# Recipe keys that do not change what is trained: runs differing only in these are seeds of one recipe.
SEED_ONLY_KEYS = ("seed", "name", "notes")


@dataclass(frozen=True)
class ClassEntry:
    """One class in label order: its dataset id (e.g. a WordNet id) and display name."""

    id: str
    name: str


def read_json(path: Path) -> Any:
    """Parse a JSON file, naming the file on failure."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CnnbenchError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise CnnbenchError(f"{path}: not a text file (not UTF-8); expected JSON") from None


def write_json(path: Path, value: Any) -> Path:
    """Atomically write ``value`` as indented JSON."""
    return write_text(path, json.dumps(value, indent=2, default=_json_scalar) + "\n")


def _json_scalar(value: Any) -> Any:
    # numpy scalars (np.float32, np.int64, np.bool_) reach rows through metric reductions.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Atomically write rows (dicts) as CSV; columns default to the first row's keys."""
    columns = columns or (list(rows[0]) if rows else [])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return write_atomic(path, write)


def _float_or_nan(text: str) -> float:
    # Epochs without a val pass (train.eval_every > 1) leave the val columns empty.
    return float(text) if text != "" else math.nan


def read_metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` as columns: name -> float array (one value per epoch, NaN where empty)."""
    path = Path(run_dir) / "metrics.csv"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in METRICS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CnnbenchError(f"{path}: missing columns {', '.join(missing)}; expected {','.join(METRICS_COLUMNS)}")
            rows = []
            for row in reader:  # csv fills a short row with None and keeps extra values under None
                if None in row or None in row.values():
                    raise CnnbenchError(f"{path}: line {reader.line_num} does not have the header's "
                                        f"{len(reader.fieldnames)} values (a damaged file?)")
                rows.append(row)
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: file not found (is {run_dir} a run folder written by `cnnbench train`?)") from None
    except UnicodeDecodeError:
        raise CnnbenchError(f"{path}: not a text file (not UTF-8); expected CSV with columns {','.join(METRICS_COLUMNS)}") from None
    try:
        return {name: np.array([_float_or_nan(r[name]) for r in rows], dtype=np.float64) for name in reader.fieldnames}
    except ValueError as exc:
        raise CnnbenchError(f"{path}: a value is not a number ({exc})") from None


def read_classes(run_dir: Path) -> list[ClassEntry]:
    """``classes.json``: the class list in label order."""
    path = Path(run_dir) / "classes.json"
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(c, dict) and "id" in c for c in data):
        raise CnnbenchError(f"{path}: expected a list of {{\"id\": ..., \"name\": ...}} in label order")
    return [ClassEntry(id=str(c["id"]), name=str(c.get("name", c["id"]))) for c in data]


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json``: the run's flat row."""
    data = read_json(Path(run_dir) / "summary.json")
    if not isinstance(data, dict):
        raise CnnbenchError(f"{Path(run_dir) / 'summary.json'}: expected one flat JSON object")
    return data


def read_recipe(run_dir: Path) -> dict[str, Any]:
    """``recipe.yaml`` as a plain mapping (empty when the folder has none)."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        return {}
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CnnbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise CnnbenchError(f"{path}: not a text file (not UTF-8); expected a YAML recipe") from None
    if not isinstance(data, dict):
        raise CnnbenchError(f"{path}: expected a mapping of recipe sections")
    return with_defaults(data)


def with_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """A stored recipe with the keys a later cnnbench added filled in at their defaults, so that a
    run folder written before a new setting existed still matches (and hashes like) the same recipe
    planned today; one that no longer validates is returned as stored."""
    try:
        return build_config(Recipe, copy.deepcopy(recipe)).to_dict()
    except CnnbenchError:
        return recipe


def recipe_without_seed_hash(recipe: dict[str, Any]) -> str:
    """A hash of the recipe with seed, name and notes removed: equal for seeds of one recipe."""
    kept = {k: v for k, v in recipe.items() if k not in SEED_ONLY_KEYS}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_evaluations(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``evaluate/<tag>.json`` row of a run folder, by tag (e.g. ``val``, ``val-flip``)."""
    folder = Path(run_dir) / EVALUATE_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))}


def is_run_folder(path: Path) -> bool:
    """A run folder has a summary, metrics or an evaluation row (an ensemble folder has only the last)."""
    path = Path(path)
    return (path / "summary.json").exists() or (path / "metrics.csv").exists() or (path / EVALUATE_DIR).is_dir()
