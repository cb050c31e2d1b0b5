"""``cnnbench predict``: top-k classes for image files, and challenge submission files.

Image files go through what training images went through: decoded to the dataset's channel
count (``torchvision.io.decode_image``), resized to the dataset's image size (64x64 for Tiny
ImageNet: the size the cache holds), then the run's own pipeline (resize to the model's input,
normalise with the training statistics). A run with ``train.tta: flip`` is scored on the image and
its mirror, as its metrics.csv and ``cnnbench evaluate`` score it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.inference import (
    DatasetViews, batch_log_probs, check_same_classes, eval_pipeline, load_scorer, resolve_runtime, split_log_probs,
)
from cnnbench.evaluate.metrics import top_k_indices
from cnnbench.files import check_writable, write_text
from cnnbench.train.native import denormals_flushed


@dataclass
class Guess:
    """One of an image's top-k classes."""

    id: str
    name: str
    probability: float


def decode_image_file(path: Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """An image file as uint8 (C, H, W) at the dataset's channel count and size; refuses non-images."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize, to_dtype

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CnnbenchError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise CnnbenchError(f"{path}: is a folder, expected an image file") from None
    if not raw:  # torch.frombuffer refuses an empty buffer with a ValueError
        raise CnnbenchError(f"{path}: empty file, not an image")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    try:
        image = decode_image(data, mode=mode)  # (C, H, W) uint8
    except (RuntimeError, ValueError):
        # torchvision's message carries its C++ source path; what the user needs is which file and what was expected.
        raise CnnbenchError(f"{path}: not an image (could not decode it as JPEG, PNG, GIF or WebP)") from None
    if image.ndim == 4:  # an animated GIF is decoded as (frames, C, H, W): its first frame, as PIL opens it
        image = image[0]
    if image.dtype != torch.uint8:  # a 16-bit PNG is decoded as uint16 (0..65535); the pipeline takes 0..255
        image = to_dtype(image, torch.uint8, scale=True)
    if tuple(image.shape[-2:]) != tuple(size):
        image = resize(image, list(size), antialias=True)
    return image


def predict_images(run_dir: Path, paths: list[Path], top: int = 5, checkpoint: str = "best",
                   device: str = "auto") -> list[dict[str, Any]]:
    """Top-``top`` classes with probabilities for each image file: [{"file", "image", "top": [Guess...]}]."""
    if top < 1:
        raise CnnbenchError(f"--top: expected a positive number, got {top}")
    scorer = load_scorer(run_dir, checkpoint)
    dataset = DatasetViews().load(scorer.recipe)
    images = torch.stack([decode_image_file(p, dataset.channels, dataset.image_size) for p in paths])
    resolved, precision = resolve_runtime(device, scorer.recipe)
    scorer.model.to(resolved)
    with denormals_flushed(resolved):
        log_probs = batch_log_probs(scorer.model, eval_pipeline(scorer, dataset.stats), images.to(resolved),
                                    precision, scorer.recipe.train.tta).cpu().numpy()
    chosen = top_k_indices(log_probs, top)
    return [{"file": str(path), "image": images[i].permute(1, 2, 0).numpy(),  # (H, W, C) uint8, as the model saw it
             "top": [Guess(scorer.classes[c].id, scorer.classes[c].name, round(float(np.exp(log_probs[i, c])), 6))
                     for c in chosen[i]]}
            for i, path in enumerate(paths)]


def write_submission(run_dir: Path, out_file: Path, split: str = "test", data: str | None = None,
                     checkpoint: str = "best", device: str = "auto", batch_size: int = 256) -> int:
    """One line per image of ``split``: ``<file name> <class id>`` (the Tiny ImageNet challenge format).

    Returns the number of lines written.
    """
    check_writable("--submission", out_file)  # now, not after predicting the whole split
    scorer = load_scorer(run_dir, checkpoint)
    views = DatasetViews()
    dataset = views.load(scorer.recipe, data)
    check_same_classes(dataset, scorer.classes, str(data or dataset.name))
    target = dataset.split(split)
    resolved, precision = resolve_runtime(device, scorer.recipe)
    scorer.model.to(resolved)
    pipeline = eval_pipeline(scorer, views.load(scorer.recipe).stats)
    log_probs = split_log_probs(scorer, pipeline, target, resolved, precision, scorer.recipe.train.tta,
                                batch_size=batch_size)
    predicted = log_probs.argmax(axis=1)
    lines = [f"{Path(f).name} {scorer.classes[p].id}" for f, p in zip(target.files, predicted)]
    write_text(Path(out_file), "\n".join(lines) + "\n")
    return len(lines)
