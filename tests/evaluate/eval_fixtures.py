"""Helpers for evaluation tests: a small Tiny ImageNet folder in the official layout, run folders
with checkpoints in the documented format (docs/design.md), and an independent forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from torchvision.io import encode_jpeg

from cnnbench.data import BatchPipeline, load_dataset
from cnnbench.models import create_model
from cnnbench.train.checkpoint import load_run, save_checkpoint
from cnnbench.train.config import load_recipe

WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900"]
NAMES = ["goldfish", "European fire salamander", "bullfrog", "tailed frog"]
PALETTE = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])


def _jpeg(label: int, rng: np.random.Generator, noise: float) -> bytes:
    # Class colour plus noise and a bright left edge: distinguishable, and not flip-symmetric.
    image = np.clip(PALETTE[label] + rng.normal(0, noise, (64, 64, 3)), 0, 255).astype(np.uint8)
    image[:, :8] = 255
    return encode_jpeg(torch.from_numpy(image).permute(2, 0, 1).contiguous(), quality=90).numpy().tobytes()


def write_tiny_folder(root: Path, wnids=WNIDS, train: int = 6, val: int = 3, test: int = 5, seed: int = 0,
                      noise: float = 25.0, confusing: bool = False) -> Path:
    """An extracted tiny-imagenet-200/ folder with len(wnids) classes.

    ``confusing``: the first val image of each class shows the next class's colour, so even a
    perfect model gets a known share wrong, always into the next class.
    """
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    (base / "val" / "images").mkdir(parents=True)
    (base / "test" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\t{n}, synonym\n" for w, n in zip(wnids, NAMES * 3)))
    annotations = []
    for label, wnid in enumerate(wnids):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train):
            (images / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(label, rng, noise))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(train)))
        for j in range(val):
            n = label * val + j
            shown = (label + 1) % len(wnids) if confusing and j == 0 else label
            (base / "val" / "images" / f"val_{n}.JPEG").write_bytes(_jpeg(shown, rng, noise))
            annotations.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    for t in range(test):
        (base / "test" / "images" / f"test_{t}.JPEG").write_bytes(_jpeg(t % len(wnids), rng, noise))
    return base


def recipe_dict(name: str, data: Path, model: str = "logreg", seed: int = 0, normalize: str = "standardize",
                data_keys: dict | None = None, **train) -> dict:
    """A 1-epoch fp32 recipe; ``train`` sets other train keys (tta="flip", precision="bf16", ...),
    ``data_keys`` other data keys (holdout, grayscale, ...)."""
    return load_recipe(values={"name": name, "seed": seed,
                               "data": {"name": "tiny-imagenet", "path": str(data), "normalize": normalize,
                                        **(data_keys or {})},
                               "model": {"name": model}, "train": {"epochs": 1, "precision": "fp32", **train}}).to_dict()


def checkpoint_state(recipe: dict, wnids, seed: int) -> dict:
    """A checkpoint dict with the documented keys, for a freshly initialised model."""
    torch.manual_seed(seed)
    kwargs = {"num_classes": len(wnids), "in_channels": 3, "input_size": 64, "init": "default"}
    model = create_model(recipe["model"]["name"], **kwargs)
    return {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "ema": None, "rng": {},
            "epoch": 1, "loader": {"epoch": 1, "position": 0}, "recipe": recipe, "classes": list(wnids),
            "model_name": recipe["model"]["name"], "model_kwargs": kwargs, "num_classes": len(wnids), "best": 0.0}


def write_checkpointed_run(folder: Path, data: Path, model: str = "logreg", seed: int = 0,
                           wnids=WNIDS, snapshots: int = 0, normalize: str = "standardize",
                           data_keys: dict | None = None, **train) -> Path:
    """A run folder as `cnnbench train` leaves it (metrics.csv, summary.json, classes.json, recipe.yaml,
    checkpoints/best.pt and last.pt; snapshot-<k>.pt for k = 1..snapshots); ``train``: recipe train keys."""
    folder.mkdir(parents=True)
    recipe = recipe_dict(folder.name, data, model, seed, normalize, data_keys, **train)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (folder / "classes.json").write_text(json.dumps([{"id": w, "name": n} for w, n in zip(wnids, NAMES * 3)]))
    (folder / "metrics.csv").write_text(
        "epoch,train_loss,train_top1,train_top5,val_loss,val_top1,val_top5,lr,epoch_seconds,images_per_s\n"
        "1,1.3,0.4,1,1.35,0.35,1,0.1,1.5,16\n")
    (folder / "summary.json").write_text(json.dumps({"run": str(folder), "name": folder.name, "model": model,
                                                     "dataset": "tiny-imagenet", "seed": seed, "params": 1000,
                                                     "mflops": 1.0, "images_per_s": 16.0, "status": "finished"}))
    state = checkpoint_state(recipe, wnids, seed)
    save_checkpoint(state, folder / "checkpoints" / "best.pt")
    save_checkpoint(state, folder / "checkpoints" / "last.pt")
    for k in range(1, snapshots + 1):
        save_checkpoint(checkpoint_state(recipe, wnids, seed + 100 * k), folder / "checkpoints" / f"snapshot-{k}.pt")
    return folder


def reference_log_probs(run_dir: Path, data: Path, split: str = "val", which: str = "best", flip: bool = False):
    """Log-softmax of a run's model over a split, computed without cnnbench.evaluate."""
    model, recipe, _ = load_run(run_dir, which)
    ds = load_dataset("tiny-imagenet", data=data)
    s = ds.split(split)
    images = torch.from_numpy(np.array(s.images)).permute(0, 3, 1, 2)
    if flip:
        images = images.flip(-1)
    pipe = BatchPipeline(normalize=recipe.data.normalize, stats=ds.stats, input_size=64, channels_last=False)
    with torch.no_grad():
        return torch.log_softmax(model(pipe(images)), dim=1).numpy(), s.labels
