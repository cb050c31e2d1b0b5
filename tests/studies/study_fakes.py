"""A stand-in for the training engine that writes run folders by the contract in docs/design.md.

Its curves are a deterministic function of the experiment name, seed and epoch, so tests know
every number the study report must show; it can stop part-way (like Ctrl-C) to test resuming.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import yaml

from cnnbench.train.config import Recipe

METRIC_COLUMNS = ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
                  "epoch_seconds", "images_per_s"]


def quality(name: str) -> float:
    """A per-experiment plateau in [0.10, 0.50), fixed by the name."""
    return 0.10 + 0.40 * (int(hashlib.sha1(name.encode()).hexdigest()[:6], 16) / 0xFFFFFF)


def epoch_row(recipe: Recipe, epoch: int) -> dict[str, float]:
    """Epoch ``epoch`` (1-based) of a run: val top-1 rises to the plateau, then dips after epoch 4."""
    q = quality(recipe.name) + 0.01 * recipe.seed
    val = q * (1 - math.exp(-epoch / 2.0)) - (0.02 * (epoch - 4) if epoch > 4 else 0.0)
    train = min(0.99, val + 0.03 * epoch)
    return {"epoch": epoch, "train_loss": 5.0 - 4 * train, "train_top1": train, "train_top5": min(1.0, 2 * train),
            "val_loss": 5.0 - 4 * val + (0.1 * (epoch - 4) if epoch > 4 else 0.0), "val_top1": val,
            "val_top5": min(1.0, 2 * val), "lr": recipe.optim.lr, "epoch_seconds": 2.0, "images_per_s": 500.0}


class FakeEngine:
    """Callable like ``runner.Trainer``; records calls; ``stop_after`` stops a named run part-way;
    ``early_stop`` finishes a named run (or a (name, seed) run) after that many epochs, as early stopping does."""

    def __init__(self, stop_after: dict[str, int] | None = None, early_stop: dict[str | tuple[str, int], int] | None = None):
        self.calls: list[tuple[str, int, bool]] = []
        self.stop_after = dict(stop_after or {})
        self.early_stop = dict(early_stop or {})

    def __call__(self, recipe: Recipe, run_dir: Path, resume: bool) -> None:
        self.calls.append((recipe.name, recipe.seed, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            (run_dir / "classes.json").write_text(json.dumps([{"id": f"n{i:08d}", "name": f"class {i}"} for i in range(200)]))
        done = read_rows(run_dir) if resume else []
        epochs = self.early_stop.get((recipe.name, recipe.seed), self.early_stop.get(recipe.name, recipe.train.epochs))
        last = self.stop_after.pop(recipe.name, epochs)
        rows = done + [epoch_row(recipe, e) for e in range(len(done) + 1, last + 1)]
        write_rows(run_dir, rows)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"fake")
        if last < epochs:
            raise KeyboardInterrupt  # as if Ctrl-C: checkpoint written, no summary
        best = max(rows, key=lambda r: r["val_top1"])
        final = rows[-1]
        summary = {"run": str(run_dir), "name": recipe.name, "model": recipe.model.name, "dataset": recipe.data.name,
                   "seed": recipe.seed, "params": 1000 + len(recipe.name), "mflops": 10.0 + len(recipe.model.name),
                   "epochs": len(rows), "best_epoch": best["epoch"], "best_val_top1": best["val_top1"],
                   "val_top1": final["val_top1"], "val_top5": final["val_top5"], "val_loss": final["val_loss"],
                   "train_top1": final["train_top1"], "train_loss": final["train_loss"], "seconds": 2.0 * len(rows),
                   "images_per_s": 500.0, "recipe_hash": "fake", "status": "finished"}
        (run_dir / "summary.json").write_text(json.dumps(summary))


def read_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(run_dir: Path, rows: list[dict[str, float]]) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


class FakeEpochEngine:
    """Callable like ``tune.EpochTrainer``: val top-1 peaks at lr = 0.01; rows go to ``on_epoch`` as epochs end."""

    def __init__(self):
        self.epochs_trained = 0

    def __call__(self, recipe: Recipe, run_dir: Path, on_epoch) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        plateau = max(0.01, 0.5 - 0.1 * abs(math.log10(recipe.optim.lr) + 2))
        rows = []
        for epoch in range(1, recipe.train.epochs + 1):
            val = plateau * (1 - math.exp(-epoch / 2.0))
            rows.append({**epoch_row(recipe, epoch), "val_top1": val})
            write_rows(run_dir, rows)
            self.epochs_trained += 1
            if epoch < recipe.train.epochs:  # as the engine's hook: the last epoch is read from metrics.csv
                on_epoch(rows[-1])
        summary = {"best_val_top1": max(r["val_top1"] for r in rows), "status": "finished"}
        (run_dir / "summary.json").write_text(json.dumps(summary))
