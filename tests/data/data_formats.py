"""Writers of small datasets in each official format (used by conftest fixtures and tests).

Tiny ImageNet: solid-colour 64x64 JPEGs (colour encodes class and index, so decoded pixels can be
checked), wnids.txt deliberately not in sorted order, a words.txt with synonyms and unrelated
entries, boxes, val annotations, a few unlabelled test images, and one grayscale image per class.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg

WNIDS = ["n02124075", "n01443537", "n09999999"]  # not sorted: class order must follow wnids.txt
WORDS = {
    "n02124075": "Egyptian cat",
    "n01443537": "goldfish, Carassius auratus",
    "n09999999": "test tube, testtube",
    "n00000001": "entity",
}


def colour(label: int, index: int) -> tuple[int, int, int]:
    """The solid colour of train/val image ``index`` of class ``label`` (distinct, mid-range values)."""
    return (40 + 60 * label, 30 + 15 * index, 200 - 40 * label)


def gray_level(label: int, index: int) -> int:
    return 60 + 50 * label + 5 * index


def jpeg(rgb: tuple[int, ...], size: tuple[int, int] = (64, 64)) -> bytes:
    channels = len(rgb)
    image = torch.tensor(rgb, dtype=torch.uint8).view(channels, 1, 1).expand(channels, *size).contiguous()
    return encode_jpeg(image, quality=95).numpy().tobytes()


@dataclass
class TinySpec:
    """What to write; tests change one field to make one kind of bad input."""

    train_per_class: int = 12
    val_per_class: int = 4
    test_images: int = 3
    gray_index: int = 1
    """Image number that is grayscale in every class's train set (None: none)."""
    skip_words: bool = False
    extra_annotation: str | None = None
    replace: dict[str, bytes] = field(default_factory=dict)
    """member (relative to tiny-imagenet-200/) -> bytes written instead."""
    extra_members: dict[str, bytes] = field(default_factory=dict)
    """raw zip member name -> bytes (names are not prefixed: used for zip-slip entries)."""


def tiny_members(spec: TinySpec) -> dict[str, bytes]:
    files: dict[str, bytes] = {"wnids.txt": ("\n".join(WNIDS) + "\n").encode()}
    if not spec.skip_words:
        files["words.txt"] = "".join(f"{k}\t{v}\n" for k, v in WORDS.items()).encode()
    annotations = []
    for label, wnid in enumerate(WNIDS):
        boxes = []
        for i in range(spec.train_per_class):
            name = f"{wnid}_{i}.JPEG"
            is_gray = spec.gray_index is not None and i == spec.gray_index
            files[f"train/{wnid}/images/{name}"] = jpeg((gray_level(label, i),) if is_gray else colour(label, i))
            boxes.append(f"{name}\t{i}\t{i + 1}\t{i + 30}\t{i + 40}\n")
        files[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()
        for j in range(spec.val_per_class):
            n = label * spec.val_per_class + j
            files[f"val/images/val_{n}.JPEG"] = jpeg(colour(label, j))
            annotations.append(f"val_{n}.JPEG\t{wnid}\t{j}\t{j}\t{50 + j}\t{60}\n")
    if spec.extra_annotation:
        annotations.append(spec.extra_annotation)
    files["val/val_annotations.txt"] = "".join(annotations).encode()
    for t in range(spec.test_images):
        files[f"test/images/test_{t}.JPEG"] = jpeg((90, 90, 90 + t))
    files.update(spec.replace)
    return files


def write_tiny_zip(path: Path, spec: TinySpec | None = None, compression: int = zipfile.ZIP_STORED) -> Path:
    spec = spec or TinySpec()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for rel, data in tiny_members(spec).items():
            z.writestr(f"tiny-imagenet-200/{rel}", data)
        for name, data in spec.extra_members.items():
            z.writestr(name, data)
    return path


def write_tiny_folder(folder: Path, spec: TinySpec | None = None) -> Path:
    root = folder / "tiny-imagenet-200"
    for rel, data in tiny_members(spec or TinySpec()).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = {}
    for split, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels  # the label, readable from the pixels
        out[split] = (images, labels)
    return out


def write_mnist(folder: Path, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in mnist_arrays().items():
        for stem, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return folder


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_batches() -> dict[str, dict]:
    rng = np.random.default_rng(3)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = 6
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(k + i) % 10 for i in range(n)]
        batches[name] = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
    return batches


def write_cifar_folder(folder: Path) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    for name, batch in cifar_batches().items():
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR_NAMES, b"num_vis": 3072}, protocol=2))
    return root


def write_cifar_targz(path: Path) -> Path:
    folder = write_cifar_folder(path.parent / "cifar-src")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(folder.parent)
    return path
