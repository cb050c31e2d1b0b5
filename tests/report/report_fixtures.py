"""Synthetic run folders in the exact run-folder format of docs/design.md (no training needed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml

from cnnbench.evaluate.metrics import score_predictions
from cnnbench.evaluate.results import write_evaluation
from cnnbench.evaluate.runs import METRICS_COLUMNS, ClassEntry

NUM_CLASSES = 200
IMAGES = 400


def class_entries(n: int = NUM_CLASSES) -> list[ClassEntry]:
    return [ClassEntry(f"n{i:08d}", f"class number {i} with a long descriptive name") for i in range(n)]


def write_run(folder: Path, name: str, model: str, seed: int = 0, epochs: int = 6, quality: float = 0.5,
              params: int = 11_000_000, mflops: float = 550.0, evaluate: bool = True,
              recipe: dict | None = None) -> Path:
    """A finished run: metrics.csv, summary.json, classes.json, recipe.yaml, and optionally evaluate/val.*"""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed + 17 * len(name))
    t = np.arange(1, epochs + 1)
    train_top1 = quality * (1 - np.exp(-t / 2)) + rng.uniform(0, 0.01, epochs)
    val_top1 = 0.8 * train_top1
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(METRICS_COLUMNS)
        for i in range(epochs):
            w.writerow([t[i], 5 - 3 * train_top1[i], train_top1[i], min(1, 2 * train_top1[i]), 5 - 2.5 * val_top1[i],
                        val_top1[i], min(1, 2 * val_top1[i]), 0.1, 12.5, 640.0])
    classes = class_entries()
    (folder / "classes.json").write_text(json.dumps([{"id": c.id, "name": c.name} for c in classes]))
    recipe = recipe or {"name": name, "seed": seed, "model": {"name": model}, "optim": {"lr": 0.1}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    best = int(np.argmax(val_top1))
    (folder / "summary.json").write_text(json.dumps({
        "run": str(folder), "name": name, "model": model, "dataset": "tiny-imagenet", "seed": seed, "params": params,
        "mflops": mflops, "epochs": epochs, "best_epoch": best + 1, "best_val_top1": val_top1[best],
        "val_top1": val_top1[-1], "val_top5": 2 * val_top1[-1], "val_loss": 5 - 2.5 * val_top1[-1],
        "train_top1": train_top1[-1], "train_loss": 5 - 3 * train_top1[-1], "seconds": 75.0, "images_per_s": 640.0,
        "recipe_hash": "x", "status": "finished"}))
    if evaluate:
        write_synthetic_evaluation(folder, classes, rng, quality)
    return folder


def write_synthetic_evaluation(folder: Path, classes: list[ClassEntry], rng, quality: float, tag: str = "val"):
    """An evaluation row + files as `cnnbench evaluate` writes them, from random predictions."""
    labels = np.repeat(np.arange(NUM_CLASSES), IMAGES // NUM_CLASSES)
    logits = rng.normal(0, 1, (IMAGES, NUM_CLASSES))
    logits[np.arange(IMAGES), labels] += 6 * quality  # better models put more mass on the truth
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    scores = score_predictions(log_probs, labels)
    colours = rng.integers(0, 256, (IMAGES, 1, 1, 3), dtype=np.uint8)
    images = np.ascontiguousarray(np.broadcast_to(colours, (IMAGES, 64, 64, 3)))
    row = {"run": str(folder), "name": folder.name, "model": "m", "split": "val", "tta": "none", "checkpoint": "best",
           "images": IMAGES, "loss": scores.loss, "top1": scores.top1, "top5": scores.top5}
    write_evaluation(folder, tag, row, scores, labels, classes, [f"val_{i}.JPEG" for i in range(IMAGES)], images)
    return scores
