"""The training loop in named pieces: ``train_one_epoch``, ``evaluate``, ``fit``.

``cnnbench.train.run`` builds the pieces from a recipe (``Engine``) and the progress that a
checkpoint carries (``Progress``); the functions here only run them. Metrics are kept as
sums — (loss * n, top-1 hits, top-5 hits, n) in float64 — so they add across batches, across
an interruption, and across ranks (one all-reduce) without averaging errors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.inference import batch_log_probs
from cnnbench.train.distributed import StopRequest, all_reduce, broadcast_buffers
from cnnbench.train.optim import KerasL2

# Inception-V3's auxiliary classifier: "the auxiliary loss is weighted by 0.4" (torchvision's
# reference and Szegedy et al. 2016); used when a model with aux heads does not give weights.
AUX_WEIGHT = 0.4


class NonFiniteLoss(CnnbenchError):
    """The loss became NaN or infinite (the weights of this step were not updated), or a step left
    non-finite weights behind (``check_finite_weights``, before a checkpoint)."""


@dataclass
class Engine:
    """Everything a run computes with (built once by ``cnnbench.train.run.build_engine``)."""

    model: torch.nn.Module          # the plain model (what checkpoints store)
    net: torch.nn.Module            # what runs the forward pass: model, or DDP / compiled around it
    optimizer: torch.optim.Optimizer
    schedule: Any                   # cnnbench.train.schedule.Schedule
    scaler: torch.amp.GradScaler
    precision: Any                  # cnnbench.train.device.Precision
    train_stream: Any               # cnnbench.train.views.ViewStream
    train_pipes: list               # one BatchPipeline per view
    train_mixes: list               # one BatchMix (or None) per view
    val_loader: Any
    val_pipe: Any
    generator: torch.Generator      # augmentation randomness (checkpointed)
    device: torch.device
    label_smoothing: float = 0.0
    l2: KerasL2 | None = None
    grad_clip: float | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    aux_weights: list[float] = field(default_factory=list)
    tta: str = "none"
    is_main: bool = True
    fast_paths: dict = field(default_factory=dict)  # which CPU fast paths build_engine switched on (env.json)


@dataclass
class Progress:
    """Where a run is; everything here goes into the checkpoint."""

    epoch: int = 0                  # completed epochs (= the 0-based index of the current one)
    step: int = 0                   # optimiser steps done in all
    best: float | None = None       # best monitored value so far
    best_epoch: int | None = None   # 1-based epoch that gave it
    bad_epochs: int = 0             # evaluated epochs since the best (early stopping)
    seconds: float = 0.0            # training seconds so far (excludes evaluation)
    history: list[dict] = field(default_factory=list)
    epoch_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.float64))
    epoch_seconds: float = 0.0      # seconds spent in the current (interrupted) epoch
    epoch_lr: float | None = None   # learning rate when the current epoch started (metrics.csv "lr")


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at C); ties
    rank the lower class index first, as ``cnnbench evaluate`` does (``evaluate.metrics.top_k_indices``)."""
    # The label's rank among its row's logits: those above it, and those equal to it at a lower
    # index. Counting is one pass over the (B, C) logits; a stable sort of every row took ~1 ms of
    # ResNet-18's ~140 ms training step at 200 classes here (torch.profiler, session 20).
    own = logits.gather(1, labels[:, None])
    lower = torch.arange(logits.shape[1], device=logits.device)[None, :] < labels[:, None]
    rank = (logits > own).sum(1) + ((logits == own) & lower).sum(1)
    return [(rank < k).sum() for k in ks]


def classification_loss(outputs, labels_a: torch.Tensor, labels_b: torch.Tensor | None, lam: float,
                        smoothing: float, aux_weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (mixup-weighted when ``labels_b`` is given) on the main logits plus the
    weighted aux heads; returns (loss, main logits). Computed in fp32 even under autocast."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    main = outputs[0]
    weights = [1.0] + (list(aux_weights) or [AUX_WEIGHT] * (len(outputs) - 1))
    loss = main.new_zeros((), dtype=torch.float32)
    for w, out in zip(weights, outputs):
        if out is None:
            continue
        out = out.float()
        term = F.cross_entropy(out, labels_a, label_smoothing=smoothing)
        if labels_b is not None:
            term = lam * term + (1.0 - lam) * F.cross_entropy(out, labels_b, label_smoothing=smoothing)
        loss = loss + w * term
    return loss, main


def _batch_sums(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, mixed=None) -> torch.Tensor:
    """(loss * n, top-1 hits, top-5 hits, n) of one batch, brought to the CPU in one transfer —
    the step's only device sync, which also serves the finite-loss check. A mixed batch
    (mixup/CutMix) counts a hit on each of its two labels with that label's weight, lam and
    1 - lam, as the loss does (mixup's reference code): its partner label is as much the answer."""
    with torch.no_grad():
        scores = logits.detach().float()
        top1, top5 = topk_hits(scores, labels)
        if mixed is not None:
            hits_b = topk_hits(scores, mixed.labels_b)
            top1, top5 = (mixed.lam * a + (1.0 - mixed.lam) * b for a, b in zip((top1, top5), hits_b))
        n = torch.tensor(float(labels.shape[0]), device=loss.device)
        return torch.stack([loss.detach().float() * n, top1.float(), top5.float(), n]).to("cpu", torch.float64)


def _step_flags(batch_sums: torch.Tensor, stop: StopRequest | None) -> tuple[bool, bool]:
    """(loss finite on every rank, stop requested on any rank); one tiny all-reduce under DDP so
    every rank leaves the loop at the same step."""
    flags = torch.tensor([0.0 if math.isfinite(batch_sums[0].item()) else 1.0,
                          1.0 if stop is not None and stop.requested else 0.0])
    flags = all_reduce(flags, op="max")
    return flags[0].item() == 0.0, flags[1].item() > 0.0


def _forward_loss(e: Engine, view: int, images: torch.Tensor, labels: torch.Tensor):
    """uint8 batch -> pipeline (augment, resize, normalise) -> mixup/cutmix -> forward under
    autocast -> loss (+ Keras L2); returns (loss, main logits, the MixedBatch or None)."""
    x = e.train_pipes[view](images, e.generator)
    mix = e.train_mixes[view]
    mixed = mix(x, labels, e.generator) if mix is not None else None
    with e.precision.autocast():
        outputs = e.net(mixed.inputs if mixed is not None else x)
    loss, logits = classification_loss(outputs, labels, mixed.labels_b if mixed else None,
                                       mixed.lam if mixed else 1.0, e.label_smoothing, e.aux_weights)
    if e.l2 is not None:
        loss = loss + e.l2.value()  # a number here; its gradient is added after backward
    return loss, logits, mixed


def _optimizer_step(e: Engine, loss: torch.Tensor) -> None:
    """backward (scaled for fp16) -> optional clipping -> optimiser -> schedule -> EMA."""
    e.optimizer.zero_grad(set_to_none=True)
    e.scaler.scale(loss).backward()
    if e.l2 is not None or e.grad_clip is not None:
        e.scaler.unscale_(e.optimizer)  # fp16: the L2 gradient and the clipping norm in true units
    if e.l2 is not None:
        e.l2.add_grad()  # Keras L2 counts in the clipped norm, as it did inside the loss
    if e.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(e.model.parameters(), e.grad_clip)
    e.scaler.step(e.optimizer)
    e.scaler.update()
    e.schedule.step_batch()
    if e.ema is not None:
        e.ema.update_parameters(e.model)


def train_one_epoch(engine: Engine, progress: Progress, stop: StopRequest | None = None, show: bool = True,
                    after_step: Callable[[Engine, Progress], None] | None = None) -> bool:
    """Run the rest of the current epoch; returns False when a stop was requested mid-epoch
    (after finishing the step in flight). ``progress.epoch_sums`` accumulates
    (loss*n, top1, top5, n); a non-finite loss raises before the weights are touched."""
    e = engine
    e.net.train()
    stream = e.train_stream
    stream.set_epoch(progress.epoch)
    bar = tqdm(total=len(stream), initial=stream.position, desc=f"epoch {progress.epoch + 1}", unit="batch",
               disable=not show, leave=False, dynamic_ncols=True)
    start = time.perf_counter() - progress.epoch_seconds
    images_before = progress.epoch_sums[3].item()
    for view, images, labels in stream:
        loss, logits, mixed = _forward_loss(e, view, images, labels)
        batch_sums = _batch_sums(loss, logits, labels, mixed)
        finite, stop_now = _step_flags(batch_sums, stop)
        if not finite:
            raise NonFiniteLoss(f"loss became {batch_sums[0].item() / batch_sums[3].item()} at epoch {progress.epoch + 1}, "
                                f"step {stream.position} of {len(stream)} (global step {progress.step + 1})")
        _optimizer_step(e, loss)
        progress.step += 1
        progress.epoch_sums += batch_sums
        progress.epoch_seconds = time.perf_counter() - start
        if show:
            s = progress.epoch_sums
            rate = (s[3].item() - images_before) / max(progress.epoch_seconds, 1e-9)
            bar.set_postfix(loss=f"{s[0] / s[3]:.3f}", acc=f"{s[1] / s[3]:.3f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
        if after_step is not None:
            after_step(e, progress)
        # A signal that arrives after this step's flags were exchanged is seen at the next step
        # under DDP (all ranks must agree); a single process can stop right here.
        if stop_now or (stop is not None and stop.requested and not torch.distributed.is_initialized()):
            bar.close()
            return False
    bar.close()
    return True


@torch.no_grad()
def check_finite_weights(engine: Engine, progress: Progress) -> None:
    """Raise ``NonFiniteLoss`` when a step left non-finite weights or BN statistics (a finite loss
    whose gradients overflowed): the next step's loss check would see it, but a checkpoint taken
    before that step (end of epoch, stop request) must not keep them as the last good one."""
    state = [v for v in engine.model.state_dict().values() if v.is_floating_point()]
    if state and not torch.stack([torch.isfinite(v).all() for v in state]).all().item():
        raise NonFiniteLoss(f"weights became non-finite in epoch {progress.epoch + 1} (by global step {progress.step})")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, pipe, precision, tta: str = "none") -> dict[str, float]:
    """Loss, top-1 and top-5 over a whole split (summed over ranks), from the log-probabilities
    ``cnnbench evaluate`` computes (``batch_log_probs``: ``tta="flip"`` mirrors the uint8 image
    before normalising and averages the two softmaxes; the loss is the NLL of that average).
    Every rank evaluates with rank 0's BN statistics: rank 0's model is the one checkpointed."""
    broadcast_buffers(model)
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for images, labels in loader:
        log_probs = batch_log_probs(model, pipe, images, precision, tta)
        top1, top5 = topk_hits(log_probs, labels)
        n = labels.shape[0]
        sums += torch.tensor([F.nll_loss(log_probs, labels, reduction="sum").item(), top1.item(), top5.item(), n],
                             dtype=torch.float64)
    return sums_to_metrics(all_reduce(sums), "val")


def sums_to_metrics(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    n = max(sums[3].item(), 1.0)
    return {f"{prefix}_loss": sums[0].item() / n, f"{prefix}_top1": sums[1].item() / n, f"{prefix}_top5": sums[2].item() / n}


def improved(monitor: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of the monitored metric beats ``best`` (lower is better for val_loss)."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor == "val_loss" else value > best
