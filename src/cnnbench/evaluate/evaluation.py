"""``cnnbench evaluate``: a run, an ensemble of runs, or a run's cyclic snapshots -> one flat row.

Each function scores log-probabilities with ``score_predictions`` and writes the row and its
files with ``write_evaluation`` (see ``cnnbench.evaluate.results`` for the file list):

- ``evaluate_run``        one checkpoint of one run, into ``RUN/evaluate/<tag>.*``
- ``evaluate_ensemble``   softmax average of several runs, into ``OUT/evaluate/<tag>.*``
- ``evaluate_snapshots``  softmax average of a cyclic_cosine run's per-cycle snapshots,
                          into ``RUN/evaluate/<tag>-snapshots.*`` (one row per snapshot too)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.data import Dataset
from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.inference import (
    DatasetViews, Scorer, check_same_classes, eval_pipeline, load_scorer, resolve_runtime, split_log_probs,
)
from cnnbench.evaluate.metrics import average_probabilities, score_predictions
from cnnbench.evaluate.results import score_row, write_evaluation
from cnnbench.evaluate.runs import read_classes, read_summary, write_json

SNAPSHOT_PATTERN = re.compile(r"snapshot-(\d+)\.pt$")


@dataclass
class EvalOptions:
    """What to evaluate on and how."""

    split: str = "val"
    data: str | None = None
    """Another dataset location (same classes) instead of the one the recipe trained on."""
    tta: str | None = None
    """none or flip; None: the run's own ``train.tta``, so the numbers are those of its metrics.csv."""
    checkpoint: str = "best"
    batch_size: int = 256
    device: str = "auto"
    tag: str | None = None
    """Name of the output files (default: split, -<checkpoint> when not best, -<tta> when it is not the run's own,
    -<data hash> with --data)."""


def resolve_tta(options: EvalOptions, scorers: list[Scorer]) -> tuple[EvalOptions, str | None]:
    """``options`` with ``tta`` set (``--tta``, else the runs' ``train.tta``) and the runs' own mode
    (None when ensemble members were trained with different ones)."""
    modes = sorted({scorer.recipe.train.tta for scorer in scorers})
    own = modes[0] if len(modes) == 1 else None
    if options.tta is not None:
        return options, own
    if own is None:
        raise CnnbenchError(f"--tta: the runs were trained with different train.tta ({', '.join(modes)}); "
                            f"give --tta none or --tta flip")
    return replace(options, tta=own), own


def default_tag(options: EvalOptions, dataset: Dataset, own_tta: str | None = "none") -> str:
    """``val``, ``val-flip``, ``val-last``, ``test-<hash8>`` (another dataset), ... unless ``options.tag`` is set.

    The checkpoint is named only when it is not ``best`` and the TTA only when it is not the runs'
    own ``train.tta``: ``val`` is the split as the run evaluates it with best.pt (what ``compare``
    reads by default), so evaluating ``last`` or a snapshot never replaces that row.
    """
    if options.tag:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", options.tag):
            raise CnnbenchError(f"--tag {options.tag!r}: expected letters, digits, '.', '_' or '-'")
        return options.tag
    tag = options.split
    if options.checkpoint != "best":
        tag += f"-{options.checkpoint}"
    if options.tta != own_tta:
        tag += f"-{options.tta}"
    if options.data is not None:
        tag += f"-{dataset.manifest_hash[:8]}"
    return tag


def _summary_facts(run_dir: Path) -> dict[str, Any]:
    summary = read_summary(run_dir) if (Path(run_dir) / "summary.json").exists() else {}
    return {k: summary.get(k) for k in ("name", "model", "seed", "params", "mflops")}


def _score_split(scorers: list[Scorer], dataset: Dataset, options: EvalOptions,
                 views: DatasetViews) -> tuple[np.ndarray, float]:
    """Averaged log-probabilities of ``scorers`` over the split, and the seconds it took.

    Each model is normalised with the statistics of the images it trained on (its own recipe's
    dataset view), never with those of the evaluated dataset.
    """
    split = dataset.split(options.split)
    if (split.labels < 0).any():
        raise CnnbenchError(f"split {options.split!r} of {dataset.name} has no labels (use `cnnbench predict "
                            f"--submission` for unlabelled test images)")
    start = time.perf_counter()
    outputs = []
    for scorer in scorers:  # each member in its own recipe's precision (an fp32 run stays fp32 in a bf16 ensemble)
        device, precision = resolve_runtime(options.device, scorer.recipe)
        scorer.model.to(device)
        pipeline = eval_pipeline(scorer, views.load(scorer.recipe).stats)
        outputs.append(split_log_probs(scorer, pipeline, split, device, precision, options.tta, options.batch_size))
    log_probs = outputs[0] if len(outputs) == 1 else average_probabilities(outputs)
    return log_probs, time.perf_counter() - start


def _write(folder: Path, tag: str, base: dict[str, Any], log_probs: np.ndarray, dataset: Dataset, split: str,
           seconds: float, classes) -> dict[str, Any]:
    s = dataset.split(split)
    scores = score_predictions(log_probs, s.labels)
    row = {**base, "split": split, "tag": tag, "dataset": dataset.name, "manifest_hash": dataset.manifest_hash,
           **score_row(scores, classes), "seconds": round(seconds, 3),
           "images_per_s": round(len(s) / seconds, 1) if seconds > 0 else None}
    write_evaluation(folder, tag, row, scores, s.labels, classes, s.files, s.images)
    return row


def evaluate_run(run_dir: Path, options: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint of a run; writes ``RUN/evaluate/<tag>.*`` and returns the row."""
    options = options or EvalOptions()
    scorer = load_scorer(run_dir, options.checkpoint)
    options, own_tta = resolve_tta(options, [scorer])
    views = DatasetViews()
    dataset = views.load(scorer.recipe, options.data)
    check_same_classes(dataset, scorer.classes, str(options.data or dataset.name))
    log_probs, seconds = _score_split([scorer], dataset, options, views)
    base = {"run": str(run_dir), **_summary_facts(run_dir), "tta": options.tta, "checkpoint": options.checkpoint,
            "data": str(options.data) if options.data else ""}
    base["model"] = base["model"] or scorer.recipe.model.name
    return _write(Path(run_dir), default_tag(options, dataset, own_tta), base, log_probs, dataset, options.split,
                  seconds, scorer.classes)


def check_ensemble_classes(run_dirs: list[Path]) -> list:
    """The shared class list of the runs; refuses runs whose class lists differ."""
    first = read_classes(run_dirs[0])
    for other in run_dirs[1:]:
        classes = read_classes(other)
        if [c.id for c in classes] != [c.id for c in first]:
            raise CnnbenchError(f"ensemble: {other} has {len(classes)} classes that differ from the {len(first)} of "
                                f"{run_dirs[0]} (compare their classes.json); members must share one class list")
    return first


# Data settings that decide which images a split holds and with how many channels.
SPLIT_KEYS = ("name", "grayscale", "skip_bad", "train_per_class", "val_split", "holdout")


def check_same_split(scorers: list[Scorer], dataset: Dataset, options: EvalOptions, views: DatasetViews) -> None:
    """Refuse members that see other images in the split than the first member, through whose data
    settings it is read: a member trained with another holdout would be scored on its own training
    images, one with another grayscale policy fed images with the wrong channel count."""
    files = dataset.split(options.split).files
    first = scorers[0]
    for scorer in scorers[1:]:
        own = views.load(scorer.recipe, options.data)
        if own.channels != dataset.channels or own.split(options.split).files != files:
            keys = [f"data.{k}" for k in SPLIT_KEYS if getattr(scorer.recipe.data, k) != getattr(first.recipe.data, k)]
            raise CnnbenchError(f"ensemble: {scorer.run_dir} sees other {options.split!r} images than {first.run_dir} "
                                f"(data settings differ: {', '.join(keys) or 'see their recipe.yaml'}); "
                                f"members must be evaluated on the same images")


def evaluate_ensemble(run_dirs: list[Path], out: Path, options: EvalOptions | None = None) -> dict[str, Any]:
    """Average the softmax outputs of several runs; writes ``OUT/evaluate/<tag>.*`` and OUT/classes.json."""
    options = options or EvalOptions()
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise CnnbenchError("--ensemble: give two or more run folders")
    resolved = [r.resolve() for r in run_dirs]
    twice = next((r for r, path in zip(run_dirs, resolved) if resolved.count(path) > 1), None)
    if twice is not None:  # averaged in twice, it would silently outweigh the other members
        raise CnnbenchError(f"--ensemble: {twice} is given more than once; name each member once")
    if Path(out).resolve() in resolved:  # its evaluate/<tag>.json would become the ensemble's
        raise CnnbenchError(f"--out {out}: is one of the ensemble's members; give the ensemble its own folder")
    classes = check_ensemble_classes(run_dirs)
    scorers = [load_scorer(r, options.checkpoint) for r in run_dirs]
    options, own_tta = resolve_tta(options, scorers)
    views = DatasetViews()
    dataset = views.load(scorers[0].recipe, options.data)
    check_same_classes(dataset, classes, str(options.data or dataset.name))
    check_same_split(scorers, dataset, options, views)
    log_probs, seconds = _score_split(scorers, dataset, options, views)
    facts = [_summary_facts(r) for r in run_dirs]
    base = {"run": str(out), "name": Path(out).name,
            "model": "ensemble(" + "+".join(f["model"] or s.recipe.model.name for f, s in zip(facts, scorers)) + ")",
            "members": " ".join(str(r) for r in run_dirs), "tta": options.tta, "checkpoint": options.checkpoint,
            "data": str(options.data) if options.data else "",
            "params": _sum_or_none(f["params"] for f in facts), "mflops": _sum_or_none(f["mflops"] for f in facts)}
    write_json(Path(out) / "classes.json", [{"id": c.id, "name": c.name} for c in classes])
    return _write(Path(out), default_tag(options, dataset, own_tta), base, log_probs, dataset, options.split, seconds,
                  classes)


def _sum_or_none(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def snapshot_names(run_dir: Path) -> list[str]:
    """Checkpoint names of the per-cycle snapshots (``checkpoints/snapshot-<k>.pt``), in cycle order."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("snapshot-*.pt"):
        match = SNAPSHOT_PATTERN.search(path.name)
        if match:
            found.append((int(match.group(1)), path.stem))
    if not found:
        raise CnnbenchError(f"{Path(run_dir) / 'checkpoints'}: no snapshot-<k>.pt files (snapshots are saved by "
                            f"schedule.name=cyclic_cosine with schedule.cycles >= 2)")
    return [name for _, name in sorted(found)]


def evaluate_snapshots(run_dir: Path, options: EvalOptions | None = None) -> dict[str, Any]:
    """Snapshot ensemble: average the softmax of every per-cycle snapshot of a cyclic_cosine run.

    Writes ``RUN/evaluate/<tag>-snapshots.*`` and returns the ensemble row with each snapshot's
    own top-1 (``snapshot_top1``, in cycle order) so the gain of the ensemble is visible.
    """
    options = options or EvalOptions()
    names = snapshot_names(run_dir)
    scorers = [load_scorer(run_dir, name) for name in names]
    options, own_tta = resolve_tta(options, scorers)
    views = DatasetViews()
    dataset = views.load(scorers[0].recipe, options.data)
    check_same_classes(dataset, scorers[0].classes, str(options.data or dataset.name))
    split = dataset.split(options.split)
    singles = []
    start = time.perf_counter()
    for scorer in scorers:
        log_probs, _ = _score_split([scorer], dataset, options, views)
        singles.append(log_probs)
    seconds = time.perf_counter() - start
    base = {"run": str(run_dir), **_summary_facts(run_dir), "tta": options.tta, "checkpoint": "+".join(names),
            "data": str(options.data) if options.data else "",
            "snapshot_top1": " ".join(f"{score_predictions(lp, split.labels).top1:.6f}" for lp in singles)}
    base["model"] = base["model"] or scorers[0].recipe.model.name
    return _write(Path(run_dir), default_tag(replace(options, checkpoint="best"), dataset, own_tta) + "-snapshots", base, average_probabilities(singles),
                  dataset, options.split, seconds, scorers[0].classes)
