"""Drive cnnbench's own training engine for a counted number of steps or a CPU-time budget.

Every cnnbench number in the benchmarks comes from the engine ``cnnbench train`` runs
(``cnnbench.train.run.build_engine`` + ``cnnbench.train.loop.train_one_epoch``), not from a
re-implementation: the benchmark builds a recipe, builds the engine from it, and watches the
steps through the loop's ``after_step`` hook, stopping it with a ``StopRequest``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from cnnbench.train.config import Recipe, load_recipe
from cnnbench.train.distributed import Ranks, StopRequest
from cnnbench.train.loop import Engine, Progress, evaluate, train_one_epoch

BENCH_AUGMENT = {"hflip": 0.5, "crop_padding": 4}
"""The augmentation of every throughput measurement (and of the plain baseline's transforms)."""


def throughput_recipe(model: str, batch_size: int, input_size: int, precision: str, channels_last: bool,
                      compile: bool, data: str | None, per_class: int | None, seed: int = 0,
                      model_options: dict | None = None, train_options: dict | None = None) -> Recipe:
    """A recipe that trains ``model`` like the plain baseline does (SGD 0.01, momentum 0.9,
    pad-crop + flip) with cnnbench's data path and the given precision / layout / compile;
    ``train_options`` overrides other ``train.*`` fields (an ablation's ``bn_impl: torch``, say)."""
    return load_recipe(values={
        "name": f"bench-{model}", "seed": seed,
        "data": {"name": "tiny-imagenet", "path": data, "train_per_class": per_class, "input_size": input_size,
                 "normalize": "standardize"},
        "model": {"name": model, "options": dict(model_options or {})},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "augment": dict(BENCH_AUGMENT),
        "train": {"batch_size": batch_size, "precision": precision, "channels_last": channels_last,
                  "compile": compile, "device": "cpu", "epochs": 1, **(train_options or {})},
    })


def load_recipe_dataset(recipe: Recipe):
    """The dataset a recipe trains on (the decoded cache, prepared once)."""
    from cnnbench.data import load_dataset

    d = recipe.data
    return load_dataset(d.name, data=d.path, grayscale=d.grayscale, train_per_class=d.train_per_class,
                        val_split=d.val_split, skip_bad=d.skip_bad, holdout=d.holdout)


def build_recipe_engine(recipe: Recipe, ds, device: str = "cpu") -> Engine:
    """The engine ``cnnbench train`` would build for ``recipe`` (single process, no run folder)."""
    from cnnbench.train.device import Precision, resolve_device, resolve_precision
    from cnnbench.train.run import build_engine, build_model, model_kwargs

    dev = resolve_device(device)
    precision = Precision(resolve_precision(recipe.train.precision, dev), dev)
    model = build_model(recipe, model_kwargs(recipe, ds))
    return build_engine(recipe, ds, model, dev, precision, Ranks())


def _next_epoch(progress: Progress) -> None:
    """Book-keeping ``fit`` does between epochs that a step counter needs (no evaluation)."""
    progress.epoch += 1
    progress.epoch_sums = torch.zeros(4, dtype=torch.float64)
    progress.epoch_seconds = 0.0


class EngineStepper:
    """Runs an engine's ``train_one_epoch`` a given number of steps at a time, resuming where the
    last call stopped (mid-epoch included), so several paths can take turns on a noisy machine."""

    def __init__(self, engine: Engine, synchronize: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter):
        self.engine, self.synchronize, self.clock = engine, synchronize, clock
        self.progress = Progress()

    def stamps(self, steps: int) -> list[float]:
        """Run ``steps`` steps; ``clock()`` before the first and after each (``steps + 1`` values).
        ``synchronize`` waits for queued GPU work so a step's time is what it took, not its launch."""
        stop = StopRequest()  # never entered: no signal handlers, only request()
        stamps = [self.clock()]

        def after_step(_engine: Engine, _progress: Progress) -> None:
            self.synchronize()
            stamps.append(self.clock())
            if len(stamps) > steps:
                stop.request("bench: enough steps")

        while len(stamps) <= steps:
            if train_one_epoch(self.engine, self.progress, stop, show=False, after_step=after_step):
                _next_epoch(self.progress)
        return stamps

    def seconds(self, steps: int) -> float:
        """Time ``steps`` optimiser steps."""
        stamps = self.stamps(steps)
        return stamps[-1] - stamps[0]


@dataclass
class BudgetRun:
    """The curve of one recipe trained under a CPU-time budget."""

    label: str
    budget_s: float
    epochs_planned: int
    curve: list[dict] = field(default_factory=list)
    """One row per evaluation: epoch (fractional at a budget cut), train_s (seconds on the budget clock),
    train_wall_s, cut (stopped by the budget), val_loss, val_top1, val_top5."""

    @property
    def final_top1(self) -> float | None:
        return self.curve[-1]["val_top1"] if self.curve else None

    def time_to(self, top1: float, clock: str = "train_s") -> float | None:
        """The first ``clock`` reading at which val top-1 reached ``top1`` (None if never)."""
        return next((row[clock] for row in self.curve if row["val_top1"] >= top1), None)

    def within(self, budget_s: float) -> list[dict]:
        """The evaluations made within ``budget_s``: those before it on the curve, and the one at
        the cut when this run's own budget is ``budget_s`` (its clock reads a step past it)."""
        return [row for row in self.curve
                if row["train_s"] <= budget_s or (row["cut"] and abs(budget_s - self.budget_s) < 1e-9)]

    def top1_within(self, budget_s: float) -> float | None:
        """The last val top-1 evaluated within ``budget_s`` (reading a longer run's curve)."""
        rows = self.within(budget_s)
        return rows[-1]["val_top1"] if rows else None

    def to_dict(self) -> dict:
        return {"label": self.label, "budget_s": self.budget_s, "epochs_planned": self.epochs_planned,
                "final_top1": self.final_top1, "curve": self.curve}


def train_within_budget(engine: Engine, epochs: int, budget_s: float, label: str,
                        log: Callable[[str], None] = lambda m: None, stop_at: float | None = None,
                        clock: Callable[[], float] = time.process_time) -> BudgetRun:
    """Train until ``epochs`` are done or ``budget_s`` seconds of ``clock`` were spent
    training (evaluation excluded), evaluating on the val split after every epoch and at the
    cut; with ``stop_at``, also stop at the first evaluation reaching that val top-1.

    The default clock is ``time.process_time`` (all threads of this process), so other users of
    a shared machine slow the run down in wall time but do not eat into its budget; a GPU run
    passes a wall clock that synchronises the device.
    """
    progress = Progress()
    stop = StopRequest()
    run = BudgetRun(label, budget_s, epochs)
    spent = {"clock": 0.0, "wall": 0.0}
    epoch_start = {}

    def after_step(_engine: Engine, _progress: Progress) -> None:
        if spent["clock"] + clock() - epoch_start["clock"] >= budget_s:
            stop.request("bench: budget spent")

    while progress.epoch < epochs and not stop.requested:
        epoch_start.update(clock=clock(), wall=time.perf_counter())
        done = train_one_epoch(engine, progress, stop, show=False, after_step=after_step)
        spent["clock"] += clock() - epoch_start["clock"]
        spent["wall"] += time.perf_counter() - epoch_start["wall"]
        batches = len(engine.train_stream)
        fraction = progress.epoch + (1.0 if done else engine.train_stream.position / batches)
        val = evaluate(engine.ema.module if engine.ema is not None else engine.model,
                       engine.val_loader, engine.val_pipe, engine.precision, engine.tta)
        run.curve.append({"epoch": round(fraction, 3), "train_s": spent["clock"], "train_wall_s": spent["wall"],
                          "cut": stop.requested, **val})
        log(f"{label}: epoch {fraction:.2f} train {spent['clock']:.0f}s val_top1 {val['val_top1']:.4f}")
        if stop_at is not None and val["val_top1"] >= stop_at:
            break
        if done:
            engine.schedule.step_epoch(val["val_loss"])
            _next_epoch(progress)
    return run
