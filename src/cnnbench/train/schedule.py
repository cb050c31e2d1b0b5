"""Learning-rate schedules: a table of factories over torch.optim.lr_scheduler.

Every schedule except ``plateau`` is stepped once per optimiser step (``step_batch``), so a
run resumed mid-epoch continues on the exact curve; ``plateau`` watches the val loss once per
evaluated epoch (``step_epoch``). Multipliers are written as plain functions of the global
step ``t`` so each is readable on one line and testable without an optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from cnnbench.errors import CnnbenchError
from cnnbench.train.config import ScheduleConfig


@dataclass(frozen=True)
class Horizon:
    """The length of a run in optimiser steps."""

    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def constant(c: ScheduleConfig, h: Horizon, lr: float) -> Callable[[int], float]:
    return lambda t: 1.0


def inverse_time(c: ScheduleConfig, h: Horizon, lr: float) -> Callable[[int], float]:
    """Keras' SGD/Adam ``decay``: lr / (1 + decay * iterations)."""
    return lambda t: 1.0 / (1.0 + c.decay * t)


def step_decay(c: ScheduleConfig, h: Horizon, lr: float) -> Callable[[int], float]:
    """Multiply by gamma every ``step_epochs`` epochs (StepLR, counted in whole epochs)."""
    return lambda t: c.gamma ** ((t // h.steps_per_epoch) // c.step_epochs)


def _warmup_cosine(t: int, warmup: int, length: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then half a cosine from 1 down to ``floor``."""
    if t < warmup:
        return (t + 1) / warmup
    progress = min(1.0, (t - warmup) / max(1, length - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine(c: ScheduleConfig, h: Horizon, lr: float) -> Callable[[int], float]:
    warmup = round(c.warmup_epochs * h.steps_per_epoch)
    return lambda t: _warmup_cosine(t, warmup, h.total_steps, c.min_lr / lr)


def cyclic_cosine(c: ScheduleConfig, h: Horizon, lr: float) -> Callable[[int], float]:
    """Snapshot ensembles (Huang et al. 2017): ``cycles`` cosine cycles restarting at the peak;
    the warm-up, if any, happens only in the first cycle."""
    length = h.total_steps // c.cycles
    warmup = round(c.warmup_epochs * h.steps_per_epoch)
    return lambda t: _warmup_cosine(t % length, warmup if t < length else 0, length, c.min_lr / lr)


LAMBDAS: dict[str, Callable[[ScheduleConfig, Horizon, float], Callable[[int], float]]] = {
    "constant": constant,
    "inverse_time": inverse_time,
    "step": step_decay,
    "cosine": cosine,
    "cyclic_cosine": cyclic_cosine,
}


def _onecycle(opt: torch.optim.Optimizer, c: ScheduleConfig, h: Horizon, lr: float):
    cycle_momentum = "momentum" not in opt.defaults or opt.defaults["momentum"] > 0
    return OneCycleLR(opt, max_lr=lr, total_steps=h.total_steps, pct_start=c.pct_start, cycle_momentum=cycle_momentum)


def _plateau(opt: torch.optim.Optimizer, c: ScheduleConfig, h: Horizon, lr: float):
    return ReduceLROnPlateau(opt, mode="min", factor=c.gamma, patience=c.patience, min_lr=c.min_lr)


SCHEDULERS = {name: (lambda fn: lambda opt, c, h, lr: LambdaLR(opt, fn(c, h, lr)))(fn) for name, fn in LAMBDAS.items()}
SCHEDULERS.update({"onecycle": _onecycle, "plateau": _plateau})


@dataclass
class Schedule:
    """A torch scheduler plus when to step it, and (cyclic_cosine) the epochs that end a cycle."""

    scheduler: object
    per_epoch: bool
    snapshot_epochs: list[int] = field(default_factory=list)

    def step_batch(self) -> None:
        if not self.per_epoch:
            self.scheduler.step()

    def step_epoch(self, val_loss: float | None) -> None:
        if self.per_epoch and val_loss is not None:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def create_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, horizon: Horizon, lr: float) -> Schedule:
    """The schedule for ``cfg`` over ``horizon``; cyclic_cosine needs epochs divisible by cycles."""
    snapshots: list[int] = []
    if cfg.name == "cyclic_cosine":
        if horizon.epochs % cfg.cycles:
            raise CnnbenchError(f"schedule.cycles: train.epochs ({horizon.epochs}) must be a multiple of cycles ({cfg.cycles})")
        per_cycle = horizon.epochs // cfg.cycles
        snapshots = [per_cycle * (k + 1) - 1 for k in range(cfg.cycles)]  # 0-based epochs ending a cycle
    if cfg.warmup_epochs > horizon.epochs:
        raise CnnbenchError(f"schedule.warmup_epochs: {cfg.warmup_epochs} is longer than the run ({horizon.epochs} epochs)")
    scheduler = SCHEDULERS[cfg.name](optimizer, cfg, horizon, lr)
    return Schedule(scheduler, per_epoch=cfg.name == "plateau", snapshot_epochs=snapshots)
