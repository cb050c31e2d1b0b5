"""Fixture data for the study tests: a small Tiny ImageNet archive in the official layout."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg

CLASSES = ["n01443537", "n01629819", "n01641577", "n01644900"]
TRAIN_PER_CLASS = 10
VAL_PER_CLASS = 4  # even, so the 25+25-style "half" split gives 2 + 2 per class


def class_image(label: int, index: int) -> bytes:
    """A 64x64 JPEG: noise around a colour that depends on the class (learnable in one epoch)."""
    g = torch.Generator().manual_seed(1000 * label + index)
    base = torch.tensor([60 + 50 * label, 200 - 40 * label, 90 + 30 * (label % 2)], dtype=torch.float32)
    image = (base.view(3, 1, 1) + 40 * torch.randn(3, 64, 64, generator=g)).clamp(0, 255).to(torch.uint8)
    return encode_jpeg(image, quality=90).numpy().tobytes()


def write_tiny_imagenet_zip(path: Path) -> Path:
    """tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/..., val/...} as in the official zip."""
    root = "tiny-imagenet-200"
    annotations = []
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/wnids.txt", "\n".join(CLASSES) + "\n")
        z.writestr(f"{root}/words.txt", "".join(f"{w}\tclass {i}\n" for i, w in enumerate(CLASSES)))
        for label, wnid in enumerate(CLASSES):
            boxes = []
            for i in range(TRAIN_PER_CLASS):
                z.writestr(f"{root}/train/{wnid}/images/{wnid}_{i}.JPEG", class_image(label, i))
                boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
            z.writestr(f"{root}/train/{wnid}/{wnid}_boxes.txt", "".join(boxes))
            for j in range(VAL_PER_CLASS):
                n = label * VAL_PER_CLASS + j
                z.writestr(f"{root}/val/images/val_{n}.JPEG", class_image(label, 100 + j))
                annotations.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t63\t63\n")
        z.writestr(f"{root}/val/val_annotations.txt", "".join(annotations))
    return path


@pytest.fixture(scope="session")
def tiny_zip(tmp_path_factory) -> Path:
    return write_tiny_imagenet_zip(tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200.zip")
