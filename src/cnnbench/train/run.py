"""One training run, start to finish: ``train_run(recipe, run_dir)`` (what ``cnnbench train`` calls).

    resolve device + precision -> load_dataset -> create_model -> build_engine
    -> (resume: restore from checkpoints/last.pt) -> fit -> summary.json

``fit`` is the epoch loop: train_one_epoch, evaluate, schedule, best/last checkpoints,
metrics.csv + TensorBoard, early stopping, snapshots. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnbench.data import BatchLoader, BatchPipeline, load_dataset
from cnnbench.data.augment import create_augment, create_mix
from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.runs import read_json, read_summary
from cnnbench.models import count_flops, create_model
from cnnbench.models.base import count_parameters, freeze_backbone
from cnnbench.train import rundir
from cnnbench.train.amx_conv import load_error as amx_load_error
from cnnbench.train.amx_conv import use_amx_convs
from cnnbench.train.checkpoint import (capture_rng_state, checkpoint_path, gather_rng_states, load_checkpoint,
                                       rank_rng_state, restore_rng_state, save_checkpoint)
from cnnbench.train.config import Recipe, TrainConfig
from cnnbench.train.device import Precision, resolve_device, resolve_precision
from cnnbench.train.distributed import (Ranks, StopRequest, all_reduce, init_distributed,
                                        ranks_from_env, shutdown_distributed)
from cnnbench.train.fused_bn import load_error as fused_bn_load_error
from cnnbench.train.fused_bn import fused_pools, use_fused_batchnorm
from cnnbench.train.gemm_conv import AUTO_MAX_AREA, use_gemm_convs, use_pixel_pair_convs
from cnnbench.train.max_pool import use_nhwc_max_pool
from cnnbench.train.native import NHWC_OPS, batch_pipeline_kernel, flush_denormals, keep_freed_memory
from cnnbench.train.loop import (Engine, NonFiniteLoss, Progress, check_finite_weights, evaluate, improved,
                                 sums_to_metrics, train_one_epoch)
from cnnbench.train.optim import create_l2_penalty, create_optimizer, writes_weight_copies
from cnnbench.train.schedule import Horizon, create_schedule
from cnnbench.train.views import ViewStream
from cnnbench.train.weight_copies import SGD_STEP, CopyingOptimizer, attach_weight_copies


@dataclass
class RunResult:
    """What a run ended with (also written to summary.json)."""

    run_dir: Path
    status: str              # finished | stopped (signal) | diverged (non-finite loss)
    summary: dict[str, Any]


# --------------------------------------------------------------------------- building
def model_kwargs(recipe: Recipe, ds) -> dict[str, Any]:
    """The ``create_model`` arguments for this recipe and dataset (stored in checkpoints)."""
    m = recipe.model
    options = dict(m.options)
    if m.dropout is not None:
        options["dropout"] = m.dropout
    return {"num_classes": ds.num_classes, "in_channels": ds.channels,
            "input_size": recipe.data.input_size or ds.image_size[0], "init": m.init,
            "pretrained": m.pretrained, "weights": m.weights, **options}


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A seed for rank ``rank``'s own random streams, independent of the recipe seed's and of
    every other rank's (``more``: e.g. the step, for fresh streams mid-run)."""
    digest = hashlib.sha256(json.dumps(["rank", seed, rank, *more]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rank(recipe: Recipe, ranks: Ranks) -> None:
    """After the model is built (identical on every rank, from the recipe seed): each rank other
    than 0 draws its own dropout masks from here on. Rank 0 keeps the stream a single process
    has, so one-process runs are unchanged."""
    if ranks.rank > 0:
        torch.manual_seed(rank_seed(recipe.seed, ranks.rank))


def build_model(recipe: Recipe, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Seeded ``create_model``; head-only fine-tuning freezes the backbone."""
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model.name, **kwargs)
    if recipe.model.finetune == "head":
        if not recipe.model.pretrained:
            raise CnnbenchError("model.finetune: head-only fine-tuning needs model.pretrained: true")
        freeze_backbone(model)
    return model


def _augment_views(recipe: Recipe) -> list[dict]:
    """The augmentation settings of each view: the section itself, then each of its sets."""
    base = {k: v for k, v in dataclasses.asdict(recipe.augment).items() if k != "sets"}
    return [base] + [dict(entry) for entry in recipe.augment.sets]


def check_views_fit(views: list[dict], image_size: tuple[int, int]) -> None:
    """What a recipe cannot check alone: the augmentation runs on the dataset's images (before the
    resize to the input size), and reflect padding must be smaller than their side."""
    for k, view in enumerate(views):
        padding = view.get("crop_padding", 0)
        if padding >= min(image_size):
            key = "augment.crop_padding" if k == 0 else f"augment.sets[{k - 1}].crop_padding"
            raise CnnbenchError(f"{key}: expected fewer pixels than the image side ({image_size[0]} x {image_size[1]} "
                                f"images), got {padding}")


def build_engine(recipe: Recipe, ds, model: torch.nn.Module, device: torch.device, precision: Precision,
                 ranks: Ranks) -> Engine:
    """Loaders, pipelines, optimiser, schedule, scaler, EMA and the wrapped network for a run."""
    t = recipe.train
    if t.batch_size % ranks.world_size:
        raise CnnbenchError(f"train.batch_size: {t.batch_size} is not divisible by the {ranks.world_size} processes")
    per_rank = t.batch_size // ranks.world_size
    input_size = model.cnnbench_cfg["input_size"]
    train_split = ds.split("train")
    views = _augment_views(recipe)
    check_views_fit(views, ds.image_size)
    loaders = [BatchLoader(train_split, per_rank, shuffle=True, seed=recipe.seed + 100_003 * k, drop_last=True,
                           device=str(device), rank=ranks.rank, world_size=ranks.world_size) for k in range(len(views))]
    if len(loaders[0]) == 0:
        raise CnnbenchError(f"train.batch_size: {t.batch_size} is larger than the {len(train_split)} training images")
    pipe_args = dict(normalize=recipe.data.normalize, stats=ds.stats, input_size=input_size, channels_last=t.channels_last)
    if device.type == "cpu" and t.channels_last and batch_pipeline_kernel() is not None:
        pipe_args["move_normalize"] = batch_pipeline_kernel()  # crop, flips and normalisation in one pass
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast_paths: dict[str, Any] = {}
    if t.conv_impl == "auto" and device.type == "cpu":
        example = torch.zeros(1, model.cnnbench_cfg["in_channels"], input_size, input_size, device=device)  # one input
        fast_paths["gemm_convs"] = use_gemm_convs(model, example, AUTO_MAX_AREA[precision.dtype])
    # (not under torch.compile: its graphs would break at every switched layer's C++ backward)
    if (t.conv_grad_impl == "auto" and device.type == "cpu" and precision.dtype == torch.bfloat16 and t.channels_last
            and not t.compile):
        fast_paths["amx_weight_grads"] = use_amx_convs(model)
        pixel_pairs = use_pixel_pair_convs(model)  # the matmul convolutions, on the same kernel's tiles
        if pixel_pairs:
            fast_paths["amx_pixel_pair_convs"] = pixel_pairs
        if amx_load_error():
            fast_paths["amx_weight_grads_unavailable"] = amx_load_error()
    if t.pool_impl == "auto" and device.type == "cpu" and t.channels_last:
        fast_paths["nhwc_max_pools"] = use_nhwc_max_pool(model)
    fast_paths["fused_batch_pipeline"] = "move_normalize" in pipe_args
    if NHWC_OPS.error:  # the gemm convolutions' im2col and the max pools fall back to Python and torch
        fast_paths["nhwc_ops_unavailable"] = NHWC_OPS.error
        if ranks.is_main:
            print(f"cnnbench: the channels_last im2col and max-pool kernels could not be built ({NHWC_OPS.error}); "
                  "training with the Python im2col and torch's max pool, which are slower here", file=sys.stderr, flush=True)
    if t.bn_impl == "auto" and device.type == "cpu" and precision.dtype == torch.bfloat16 and t.channels_last:
        switched = use_fused_batchnorm(model)
        if switched:
            fast_paths["fused_batchnorms"] = switched
            fast_paths["fused_bn_pools"] = fused_pools(model)
        elif fused_bn_load_error() and any(type(m) is torch.nn.BatchNorm2d for m in model.modules()):
            fast_paths.update(fused_batchnorms=0, fused_bn_unavailable=fused_bn_load_error())
            if ranks.is_main:
                print(f"cnnbench: the fused batch norm could not be built ({fused_bn_load_error()}); "
                      "training with torch's, which is slower here", file=sys.stderr, flush=True)
    wants_copies = (t.optim_impl == "auto" and precision.dtype == torch.bfloat16 and not t.compile
                    and writes_weight_copies(recipe.optim, device))
    optimizer = create_optimizer(model, recipe.optim, weight_copies=wants_copies and SGD_STEP.load() is not None)
    if isinstance(optimizer, CopyingOptimizer):
        # Gradients may stay bf16 for the step where nothing reads weight.grad before it: no Keras L2,
        # no clipping (both edit or read .grad after backward) and no DDP (its hooks all-reduce .grad).
        bf16_grads = recipe.optim.l2 <= 0 and recipe.optim.grad_clip is None and not ranks.distributed
        fast_paths["weight_copies"] = attach_weight_copies(model, optimizer, bf16_grads=bf16_grads)
        if bf16_grads and fast_paths["weight_copies"]:
            fast_paths["bf16_weight_grads"] = True
    elif wants_copies:  # the kernel could not be built
        fast_paths["weight_copies_unavailable"] = SGD_STEP.error
        if ranks.is_main:
            print(f"cnnbench: the one-pass optimiser step could not be built ({SGD_STEP.error}); training with "
                  "torch's optimiser and autocast's weight casts, which are slower here", file=sys.stderr, flush=True)
    fast_paths["fused_optimizer"] = bool(optimizer.defaults.get("fused"))
    horizon = Horizon(t.epochs, sum(len(loader) for loader in loaders))
    net = model
    if ranks.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)
    ema = None
    if t.ema is not None:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(t.ema), use_buffers=True)
    return Engine(
        model=model, net=net, optimizer=optimizer,
        schedule=create_schedule(optimizer, recipe.schedule, horizon, recipe.optim.lr),
        scaler=precision.grad_scaler(), precision=precision,
        train_stream=ViewStream(loaders, recipe.seed),
        train_pipes=[BatchPipeline(augment=create_augment(v), **pipe_args) for v in views],
        train_mixes=[create_mix(v) for v in views],
        val_loader=BatchLoader(ds.split("val"), per_rank, shuffle=False, drop_last=False, device=str(device),
                               rank=ranks.rank, world_size=ranks.world_size),
        val_pipe=BatchPipeline(**pipe_args),
        # Per-rank stream of augmentation randomness: ranks see different images, and must not
        # draw the same crops for them.
        generator=torch.Generator(device=device).manual_seed(recipe.seed * 1000 + ranks.rank),
        device=device, label_smoothing=t.label_smoothing, l2=create_l2_penalty(model, recipe.optim),
        grad_clip=recipe.optim.grad_clip, ema=ema, aux_weights=list(model.cnnbench_cfg.get("aux_weights") or []),
        tta=t.tta, is_main=ranks.is_main, fast_paths=fast_paths,
    )


# --------------------------------------------------------------------------- checkpoints
def checkpoint_state(engine: Engine, progress: Progress, recipe: Recipe, classes: list[str], kwargs: dict,
                     complete: bool, rng_ranks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict (docs/design.md keys plus the ones listed in train/checkpoint.py).
    ``rng`` holds this process's RNG states; ``rng_ranks`` (``gather_rng_states``): every rank's,
    stored as rng["ranks"] so that each rank resumes its own."""
    rng = capture_rng_state(engine.generator)
    if rng_ranks is not None:
        rng["ranks"] = rng_ranks
    return {
        "model": engine.model.state_dict(), "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.schedule.state_dict(), "scaler": engine.scaler.state_dict(),
        "ema": engine.ema.state_dict() if engine.ema is not None else None,
        "rng": rng, "epoch": progress.epoch, "step": progress.step,
        "loader": engine.train_stream.state_dict(), "recipe": recipe.to_dict(), "classes": classes,
        "model_name": recipe.model.name, "num_classes": kwargs["num_classes"], "model_kwargs": kwargs,
        "best": progress.best, "best_epoch": progress.best_epoch, "bad_epochs": progress.bad_epochs,
        "seconds": progress.seconds, "history": progress.history, "epoch_sums": progress.epoch_sums,
        "epoch_seconds": progress.epoch_seconds, "epoch_lr": progress.epoch_lr, "complete": complete,
    }


def restore(engine: Engine, ckpt: dict[str, Any], ranks: Ranks) -> Progress:
    """Put the engine back where ``ckpt`` was taken and return the progress it recorded."""
    engine.model.load_state_dict(ckpt["model"])
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    engine.schedule.load_state_dict(ckpt["scheduler"])
    engine.scaler.load_state_dict(ckpt["scaler"])
    if engine.ema is not None:
        if ckpt.get("ema") is None:
            raise CnnbenchError("resume: the recipe asks for train.ema but the checkpoint has no EMA state")
        engine.ema.load_state_dict(ckpt["ema"])
    engine.train_stream.load_state_dict(ckpt["loader"])
    # Only rank 0 carries the (already all-reduced) sums of an interrupted epoch, so the
    # end-of-epoch all-reduce counts them once.
    sums = ckpt["epoch_sums"] if ranks.is_main else torch.zeros(4, dtype=torch.float64)
    own = rank_rng_state(ckpt["rng"], ranks.rank, ranks.world_size)
    try:
        restore_rng_state(own if own is not None else ckpt["rng"], engine.generator)
    except RuntimeError as exc:  # a generator state of another device type (16 bytes on CUDA, 5056 on the CPU)
        trained_on = ckpt.get("device")
        how = f"--device {torch.device(trained_on).type}" if trained_on else "the device its env.json names"
        why = str(exc).partition("\n")[0][:100]
        raise CnnbenchError(f"resume: the checkpoint's random-number states come from a run on "
                            f"{trained_on or 'another kind of device'} and do not fit {engine.device} ({why}); "
                            f"resume with {how}") from None
    if own is None and ranks.rank > 0:
        # Saved by another number of processes: rank 0's states here would repeat rank 0's dropout
        # masks and augmentation on this rank, so it draws fresh streams of its own (not exact,
        # which a different world size cannot be anyway).
        seed = rank_seed(ckpt["recipe"]["seed"], ranks.rank, ckpt["step"])
        torch.manual_seed(seed)
        engine.generator.manual_seed(seed)
    return Progress(epoch=ckpt["epoch"], step=ckpt["step"], best=ckpt["best"], best_epoch=ckpt["best_epoch"],
                    bad_epochs=ckpt["bad_epochs"], seconds=ckpt["seconds"], history=list(ckpt["history"]),
                    epoch_sums=sums.clone(), epoch_seconds=ckpt["epoch_seconds"], epoch_lr=ckpt["epoch_lr"])


# --------------------------------------------------------------------------- the epoch loop
@dataclass
class RunFiles:
    """Rank 0's writers: run folder, TensorBoard, and what every checkpoint needs besides state."""

    run_dir: Path
    recipe: Recipe
    classes: list[str]
    kwargs: dict
    writer: Any = None  # torch.utils.tensorboard.SummaryWriter
    last_saved: str | None = None  # where checkpoints/last.pt stands, in words (for messages)
    provenance: dict = dataclasses.field(default_factory=dict)  # dataset_manifest_hash, device, precision

    def save(self, engine: Engine, progress: Progress, which: str, complete: bool = True,
             rng_ranks: dict[str, Any] | None = None) -> None:
        state = checkpoint_state(engine, progress, self.recipe, self.classes, self.kwargs, complete, rng_ranks)
        state.update(self.provenance)
        save_checkpoint(state, checkpoint_path(self.run_dir, which))
        if which == "last":
            self.last_saved = checkpoint_point(progress.epoch, engine.train_stream.position, complete)

    def log_epoch(self, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        self.writer.flush()


def checkpoint_point(epoch: int, position: int, complete: bool) -> str:
    """Where a checkpoint was taken, in words: "end of epoch 2" or "epoch 3, step 4"."""
    return f"end of epoch {epoch}" if complete else f"epoch {epoch + 1}, step {position}"


def _epoch_row(progress: Progress, val: dict | None, lr: float, seconds: float) -> dict:
    train = sums_to_metrics(progress.epoch_sums, "train")
    images = progress.epoch_sums[3].item()
    row = {"epoch": progress.epoch + 1, **train, "val_loss": None, "val_top1": None, "val_top5": None,
           "lr": lr, "epoch_seconds": seconds, "images_per_s": images / seconds if seconds > 0 else None}
    row.update(val or {})
    return row


def fit(engine: Engine, progress: Progress, recipe: Recipe, files: RunFiles | None, stop: StopRequest,
        show: bool, after_step: Callable[[Engine, Progress], None] | None = None) -> str:
    """Train until the last epoch, early stopping, or a stop request; returns the status."""
    t = recipe.train
    while progress.epoch < t.epochs and not out_of_patience(t, progress.bad_epochs):
        if progress.epoch_lr is None:
            progress.epoch_lr = engine.optimizer.param_groups[0]["lr"]
        if not train_one_epoch(engine, progress, stop, show, after_step):
            check_finite_weights(engine, progress)
            progress.epoch_sums = all_reduce(progress.epoch_sums.clone())
            rng_ranks = gather_rng_states(engine.generator)  # a collective: every rank joins
            if files:
                files.save(engine, progress, "last", complete=False, rng_ranks=rng_ranks)
            return "stopped"
        check_finite_weights(engine, progress)
        all_reduce(progress.epoch_sums)
        seconds = progress.epoch_seconds
        progress.seconds += seconds
        last = progress.epoch + 1 == t.epochs
        val = None
        if last or (progress.epoch + 1) % t.eval_every == 0:
            val = evaluate(engine.ema.module if engine.ema is not None else engine.model,
                           engine.val_loader, engine.val_pipe, engine.precision, engine.tta)
        engine.schedule.step_epoch(val["val_loss"] if val else None)
        row = _epoch_row(progress, val, progress.epoch_lr, seconds)
        progress.history.append(row)
        is_best = val is not None and improved(t.monitor, val[t.monitor], progress.best)
        if is_best:
            progress.best, progress.best_epoch, progress.bad_epochs = val[t.monitor], progress.epoch + 1, 0
        elif val is not None:
            progress.bad_epochs += 1
        snapshot = progress.epoch in engine.schedule.snapshot_epochs
        progress.epoch, progress.epoch_sums, progress.epoch_seconds, progress.epoch_lr = \
            progress.epoch + 1, torch.zeros(4, dtype=torch.float64), 0.0, None
        rng_ranks = gather_rng_states(engine.generator)
        if files:
            # last.pt goes last: it records this epoch as done (and as best), so a crash between
            # the saves must leave it behind best.pt and the snapshot, never ahead of them.
            if is_best:
                files.save(engine, progress, "best", rng_ranks=rng_ranks)
            if snapshot:
                cycle = engine.schedule.snapshot_epochs.index(progress.epoch - 1) + 1
                files.save(engine, progress, f"snapshot-{cycle}", rng_ranks=rng_ranks)
            files.save(engine, progress, "last", rng_ranks=rng_ranks)
            rundir.write_metrics(files.run_dir, progress.history)
            files.log_epoch(row)
        if not show and engine.is_main:
            print(_log_line(row, t.epochs), flush=True)
        if out_of_patience(t, progress.bad_epochs):
            if engine.is_main:
                print(f"early stopping: {t.monitor} has not improved for {progress.bad_epochs} evaluations "
                      f"(best {progress.best:.4f} at epoch {progress.best_epoch})", flush=True)
            break
    return "finished"


def out_of_patience(t: TrainConfig, bad_epochs: int) -> bool:
    """Whether early stopping ends the run after ``bad_epochs`` evaluations without improvement."""
    return t.early_stopping is not None and bad_epochs >= t.early_stopping


def finished_reason(ckpt: dict[str, Any], t: TrainConfig) -> str | None:
    """Why the run that wrote ``ckpt`` had already finished (None if it had not): all epochs
    done, or early stopping out of patience. Read from what every checkpoint holds."""
    if not ckpt.get("complete", True):
        return None  # stopped mid-epoch
    if ckpt["epoch"] >= t.epochs:
        return f"epoch {ckpt['epoch']} of {t.epochs} done"
    if out_of_patience(t, ckpt["bad_epochs"]):
        return (f"stopped early after epoch {ckpt['epoch']}: {t.monitor} had not improved for "
                f"{ckpt['bad_epochs']} evaluations")
    return None


def _log_line(row: dict, epochs: int) -> str:
    val = f" val_loss {row['val_loss']:.4f} val_top1 {row['val_top1']:.4f}" if row.get("val_top1") is not None else ""
    return (f"epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} train_top1 {row['train_top1']:.4f}"
            f"{val} lr {row['lr']:.4g} {row['epoch_seconds']:.1f}s {row['images_per_s'] or 0:.0f} img/s")


# --------------------------------------------------------------------------- summary
def recipe_hash(recipe: Recipe) -> str:
    """Identifies what is trained: the recipe without name, notes and seed (seeds of one recipe share it)."""
    values = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "notes", "seed")}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def build_summary(run_dir: Path, recipe: Recipe, ds, model, progress: Progress, status: str, mflops: float) -> dict:
    """summary.json's row. The best_* values all come from the epoch ``train.monitor`` chose, the
    one best.pt holds (under monitor val_loss that need not be the epoch of the highest top-1)."""
    last_val = next((r for r in reversed(progress.history) if r.get("val_top1") is not None), {})
    last = progress.history[-1] if progress.history else {}
    best = next((r for r in progress.history if r["epoch"] == progress.best_epoch), {})
    images = sum(r["images_per_s"] * r["epoch_seconds"] for r in progress.history if r.get("images_per_s"))
    return {
        "run": run_dir.name, "name": recipe.name, "model": recipe.model.name, "dataset": ds.name,
        "seed": recipe.seed, "params": count_parameters(model), "mflops": round(mflops, 3),
        "epochs": progress.epoch, "monitor": recipe.train.monitor, "best_epoch": progress.best_epoch,
        "best_val_top1": best.get("val_top1"), "best_val_top5": best.get("val_top5"), "best_val_loss": best.get("val_loss"),
        "val_top1": last_val.get("val_top1"), "val_top5": last_val.get("val_top5"), "val_loss": last_val.get("val_loss"),
        "train_top1": last.get("train_top1"), "train_loss": last.get("train_loss"),
        "seconds": round(progress.seconds, 3), "images_per_s": images / progress.seconds if progress.seconds else None,
        "recipe_hash": recipe_hash(recipe), "status": status,
    }


# --------------------------------------------------------------------------- main
def train_run(recipe: Recipe | None, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
              quiet: bool = False, device: str | None = None,
              after_step: Callable[[Engine, Progress], None] | None = None) -> RunResult:
    """Train ``recipe`` into ``run_dir``, or with ``resume`` continue the run there (its own
    recipe.yaml; a recipe given too must be identical). ``device`` overrides train.device."""
    run_dir = Path(run_dir)
    ranks = ranks_from_env()
    ckpt = None
    if resume:
        recipe = _resumed_recipe(run_dir, recipe)
        ckpt = _last_checkpoint(run_dir)
        reason = finished_reason(ckpt, recipe.train)
        summary = read_summary(run_dir) if (run_dir / "summary.json").is_file() else {}
        if reason is not None and summary.get("status") == "finished":
            return _already_finished(run_dir, reason, summary, ranks)
        # (finished but no summary.json: a crash just before it; the resume below trains nothing and writes it)
    elif recipe is None:
        raise CnnbenchError("train: a recipe is needed unless resuming (cnnbench train RECIPE.yaml)")
    t = recipe.train
    dev = init_distributed(ranks, resolve_device(device or t.device))
    precision = Precision(resolve_precision(t.precision, dev), dev)
    created = rundir.missing_folders(run_dir) if ranks.is_main and not resume else []
    replaces_old_run = rundir.prepare_run_dir(run_dir, resume, overwrite) if ranks.is_main else False
    # Process-wide torch settings, put back afterwards so a caller (a study, a test) is unaffected.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if t.workers:
            torch.set_num_threads(t.workers)
        if t.deterministic:  # cuBLAS needs a fixed workspace for reproducible matmuls; read at its first handle
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(t.deterministic)
        result = _train(recipe, run_dir, ckpt, quiet, dev, precision, ranks, after_step, replaces_old_run)
        # Under DDP every rank returns only once rank 0 has written the run folder, so a caller on
        # any rank can read it (or resume it) at once. A CPU tensor: gloo carries it on every device.
        all_reduce(torch.zeros(1))
        return result
    except BaseException:
        rundir.remove_empty(created)  # refused before anything was written (data, model): no empty run folder
        raise
    finally:
        flush_denormals(False)  # torch's default, if _train turned it on (before the thread count changes back)
        keep_freed_memory(False)  # glibc's defaults, if _train changed them
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        shutdown_distributed()


def _resumed_recipe(run_dir: Path, recipe: Recipe | None) -> Recipe:
    """Resuming uses the recipe saved in the run folder; a different one given with it is an error."""
    from cnnbench.train.config import load_recipe

    saved = load_recipe(run_dir / "recipe.yaml") if (run_dir / "recipe.yaml").exists() else None
    if saved is None:
        raise CnnbenchError(f"{run_dir}: nothing to resume (no recipe.yaml); start a run with --out {run_dir}")
    if recipe is not None and recipe.to_dict() != saved.to_dict():
        raise CnnbenchError(f"{run_dir}: the recipe given differs from the run's recipe.yaml; "
                            "resume with only --resume RUN_DIR")
    return saved


def _start_again(run_dir: Path) -> str:
    """The command that starts a run folder's recipe again from scratch, in its place."""
    return f"cnnbench train {run_dir / rundir.RUN_MARKER} --out {run_dir} --overwrite"


def _last_checkpoint(run_dir: Path) -> dict[str, Any]:
    """checkpoints/last.pt of the run to resume. A run that ended (a crash, a NaN) before its first
    checkpoint has none: nothing can be resumed, the run can only start again."""
    path = checkpoint_path(run_dir, "last")
    if not path.is_file():
        raise CnnbenchError(f"{run_dir}: no checkpoint to resume from ({path} does not exist: the run ended before "
                            f"its first checkpoint); start it again with: {_start_again(run_dir)}")
    return load_checkpoint(path)


def _already_finished(run_dir: Path, reason: str, summary: dict, ranks: Ranks) -> RunResult:
    """Resuming a finished run: nothing to train and nothing to rewrite; its summary as it is."""
    if ranks.is_main:
        print(f"{run_dir}: the run already finished ({reason}); nothing to resume, nothing was changed. "
              "Train more with a new run (another --out, or --overwrite)", file=sys.stderr, flush=True)
    return RunResult(run_dir, "finished", summary)


def _check_resumable(run_dir: Path, ckpt: dict[str, Any], classes: list[str], provenance: dict, ranks: Ranks) -> None:
    """Resume only on the data the run was trained on; say so when the precision changes with the device."""
    if ckpt["classes"] != classes:
        raise CnnbenchError(f"{run_dir}: the dataset's classes differ from the ones this run was trained on")
    # Checkpoints from before the hash was stored in them: the first process's env.json has it.
    saved = ckpt.get("dataset_manifest_hash") or _first_environment(run_dir).get("dataset_manifest_hash")
    if saved and saved != provenance["dataset_manifest_hash"]:
        raise CnnbenchError(f"{run_dir}: the dataset differs from the one this run was trained on (manifest hash "
                            f"{provenance['dataset_manifest_hash']}, the run's {saved}); resume with the same data, "
                            "or start a new run")
    if ckpt.get("precision") not in (None, provenance["precision"]) and ranks.is_main:
        print(f"{run_dir}: warning: resuming in {provenance['precision']} on {provenance['device']}; the run so far "
              f"trained in {ckpt['precision']} on {ckpt['device']} (train.precision auto follows the device)",
              file=sys.stderr, flush=True)


def _first_environment(run_dir: Path) -> dict:
    path = run_dir / "env.json"
    return read_json(path) if path.is_file() else {}


def _diverged_hint(run_dir: Path, last_saved: str | None) -> str:
    """What to do after a non-finite loss: name last.pt only if there is one."""
    path = checkpoint_path(run_dir, "last")
    if path.is_file():
        return (f"The last good checkpoint is {path}{f' ({last_saved})' if last_saved else ''}; "
                "lower optim.lr or use train.precision=fp32")
    return (f"No checkpoint exists yet, so there is nothing to resume; start again with a lower optim.lr "
            f"or train.precision=fp32: {_start_again(run_dir)} --set optim.lr=...")


def _train(recipe: Recipe, run_dir: Path, ckpt: dict[str, Any] | None, quiet: bool, dev: torch.device,
           precision: Precision, ranks: Ranks, after_step, replaces_old_run: bool = False) -> RunResult:
    resume = ckpt is not None
    d = recipe.data
    ds = load_dataset(d.name, data=d.path, grayscale=d.grayscale, train_per_class=d.train_per_class,
                      val_split=d.val_split, skip_bad=d.skip_bad, holdout=d.holdout, progress=not quiet and ranks.is_main)
    kwargs = model_kwargs(recipe, ds)
    model = build_model(recipe, kwargs)
    mflops = count_flops(model) / 1e6  # forward FLOPs per image at the input size, torch's flop counter
    engine = build_engine(recipe, ds, model, dev, precision, ranks)
    if dev.type == "cpu":
        # Subnormal floats take a slow microcode path on x86 CPUs. Adam's first moments of weights
        # whose gradients stay zero (dead units) decay by beta1 per step into that range within a
        # few epochs, and so do weights shrunk by L2: report 000's model E slowed from 89-95
        # s/epoch (epochs 1-3) to 141-145 (epochs 6-7), with 8.9 M of its 42.7 M moments and
        # 8.5 M weights subnormal; its Adam step in that state takes 11x longer
        # (benchmarks/probe_denormal.py). Flushing them to zero (FTZ/DAZ, as TensorFlow's CPU
        # thread pools do) changes only values below 1.2e-38. train_run() turns it off again.
        engine.fast_paths["flush_denormal"] = flush_denormals(True)
        # glibc's malloc returned and re-faulted a step's large tensors every step (native.py)
        engine.fast_paths["malloc_keep_freed"] = keep_freed_memory(True)
    seed_rank(recipe, ranks)
    classes = [c.id for c in ds.classes]
    progress = Progress()
    provenance = {"dataset_manifest_hash": ds.manifest_hash, "device": str(dev), "precision": precision.name}
    if resume:
        _check_resumable(run_dir, ckpt, classes, provenance, ranks)
        progress = restore(engine, ckpt, ranks)
    files = None
    if ranks.is_main:
        from torch.utils.tensorboard import SummaryWriter

        if replaces_old_run:  # only now: the new recipe has built, so --overwrite never loses a run for nothing
            rundir.clear_old_run(run_dir)
        if not resume:
            rundir.write_recipe(run_dir, recipe.to_dict())
            rundir.write_classes(run_dir, ds.classes)
        resumed_at = progress.epoch if resume else None
        rundir.write_json_atomic(rundir.environment_path(run_dir, resumed_at), rundir.environment(
            str(dev), precision.name, ds.manifest_hash, ranks.world_size,
            {"resumed_at_epoch": resumed_at, "per_rank_batch": recipe.train.batch_size // ranks.world_size,
             "fast_paths": engine.fast_paths}))
        files = RunFiles(run_dir, recipe, classes, kwargs, SummaryWriter(str(run_dir / "tb"), purge_step=progress.epoch + 1),
                         provenance=provenance)
        if resume:
            files.last_saved = checkpoint_point(ckpt["epoch"], ckpt["loader"]["position"], ckpt.get("complete", True))
    show = not quiet and ranks.is_main and sys.stderr.isatty()
    status = "finished"
    try:
        with StopRequest() as stop:
            status = fit(engine, progress, recipe, files, stop, show, after_step)
    except NonFiniteLoss as exc:
        status = "diverged"
        message = str(exc)
        if files:
            _finish(files, recipe, ds, model, progress, status, mflops)
        raise NonFiniteLoss(f"{message}; stopped. {_diverged_hint(run_dir, files.last_saved if files else None)}") from None
    summary = _finish(files, recipe, ds, model, progress, status, mflops) if files else {}
    if status == "stopped" and ranks.is_main:
        print(f"stopped at epoch {progress.epoch + 1}, step {engine.train_stream.position} of {len(engine.train_stream)}; "
              f"checkpoint written. Resume with: cnnbench train --resume {run_dir}", file=sys.stderr, flush=True)
    return RunResult(run_dir, status, summary)


def _finish(files: RunFiles, recipe, ds, model, progress, status, mflops) -> dict:
    summary = build_summary(files.run_dir, recipe, ds, model, progress, status, mflops)
    rundir.write_summary(files.run_dir, summary)
    files.writer.close()
    return summary
