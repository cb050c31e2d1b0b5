"""Helpers for the training-engine tests: a tiny Tiny-ImageNet-format dataset the tests write
themselves, and a small recipe that trains on it in about a second.

The dataset has 4 classes whose images differ in colour and stripe direction (plus noise), so
a small net learns them within a few epochs; images are the official 64x64 JPEGs, and the
recipes resize them to 12 px on the device to keep every step cheap.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900"]
NAMES = ["goldfish", "European fire salamander", "bullfrog", "tailed frog"]
TRAIN_PER_CLASS = 24
VAL_PER_CLASS = 8


def _image(label: int, rng: np.random.Generator) -> bytes:
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]][label], dtype=np.float64)
    stripes = (np.arange(64) // 8 % 2)[:, None] if label % 2 else (np.arange(64) // 8 % 2)[None, :]
    pixels = base[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 25, (64, 64, 3))
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_tiny_imagenet(path: Path, seed: int = 0) -> Path:
    """A tiny-imagenet-200.zip in the official layout (4 classes, 24 train + 8 val images each)."""
    rng = np.random.default_rng(seed)
    members = {"wnids.txt": "\n".join(WNIDS) + "\n",
               "words.txt": "".join(f"{w}\t{n}\n" for w, n in zip(WNIDS, NAMES))}
    annotations = []
    for label, wnid in enumerate(WNIDS):
        members[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(
            f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(TRAIN_PER_CLASS))
        for i in range(TRAIN_PER_CLASS):
            members[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = _image(label, rng)
        for j in range(VAL_PER_CLASS):
            n = label * VAL_PER_CLASS + j
            members[f"val/images/val_{n}.JPEG"] = _image(label, rng)
            annotations.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    members["val/val_annotations.txt"] = "".join(annotations)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in members.items():
            z.writestr(f"tiny-imagenet-200/{rel}", data)
    return path


def tiny_recipe(data: Path, **sections) -> dict:
    """A recipe mapping for a ~1 s run on ``tiny_data``; ``sections`` update its sections."""
    values = {
        "name": "tiny", "seed": 0,
        "data": {"name": "tiny-imagenet", "path": str(data), "input_size": 12, "normalize": "standardize"},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "constant"},
        # One intra-op thread: on a shared 2-core machine, two threads on such tiny ops spend
        # most of their time waiting for each other (measured 5x slower under load).
        "train": {"epochs": 2, "batch_size": 16, "precision": "fp32", "device": "cpu", "deterministic": True,
                  "workers": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return values
