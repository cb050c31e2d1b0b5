"""A tiny Tiny ImageNet archive in the official layout, for running the bench machinery fast."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900"]
TRAIN_PER_CLASS = 8
VAL_PER_CLASS = 4


def _jpeg(rng: np.random.Generator, gray: bool = False) -> bytes:
    from PIL import Image

    shape = (64, 64) if gray else (64, 64, 3)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_tiny_imagenet_zip(path: Path, seed: int = 0) -> Path:
    """4 classes x 8 train images (one grayscale) + 4 val images per class, 64x64 JPEGs."""
    rng = np.random.default_rng(seed)
    root = "tiny-imagenet-200/"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(root + "wnids.txt", "\n".join(WNIDS) + "\n")
        zf.writestr(root + "words.txt", "".join(f"{w}\tclass {i}, synonym\n" for i, w in enumerate(WNIDS)))
        for c, wnid in enumerate(WNIDS):
            boxes = []
            for i in range(TRAIN_PER_CLASS):
                name = f"{wnid}_{i}.JPEG"
                zf.writestr(f"{root}train/{wnid}/images/{name}", _jpeg(rng, gray=(c, i) == (0, 3)))
                boxes.append(f"{name}\t0\t0\t63\t63\n")
            zf.writestr(f"{root}train/{wnid}/{wnid}_boxes.txt", "".join(boxes))
        annotations = []
        for i in range(VAL_PER_CLASS * len(WNIDS)):
            zf.writestr(f"{root}val/images/val_{i}.JPEG", _jpeg(rng))
            annotations.append(f"val_{i}.JPEG\t{WNIDS[i % len(WNIDS)]}\t0\t0\t63\t63\n")
        zf.writestr(root + "val/val_annotations.txt", "".join(annotations))
    return path


@pytest.fixture(scope="session")
def tiny_zip(tmp_path_factory) -> Path:
    return write_tiny_imagenet_zip(tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200.zip")
