"""CIFAR-10 python batches, from cifar-10-python.tar.gz or the cifar-10-batches-py/ folder.

Each batch is a (Python 2) pickle of {b"data": uint8 (10000, 3072) as R, G, B planes of 32x32,
b"labels": [int], b"filenames": [bytes]}; batches.meta holds b"label_names".
"""

from __future__ import annotations

import io
import pickle
from collections import Counter

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.data.readers import ClassInfo, DecodedChunk, RawSplit, Reader, register_reader

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Pickles can run arbitrary code; the batches need nothing beyond numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def unique_names(named: list[tuple[str, str]]) -> list[str]:
    """(file name, batch[index]) -> names, a repeated name qualified by its place in the batches."""
    counts = Counter(name for name, _place in named)
    return [name if counts[name] == 1 else f"{place}/{name}" for name, place in named]


@register_reader("cifar10")
class Cifar10Reader(Reader):
    version = 2  # 2: repeated file names made unique (the half split and row lookups go by name)
    image_size = (32, 32)
    source_channels = 3
    eval_split = "test"
    marker = "batches.meta"
    folder_names = ("cifar-10-batches-py",)
    archive_patterns = ("cifar-10-python.tar.gz", "cifar-10-python*.tar.gz")
    layout_hint = "cifar-10-python.tar.gz or its folder cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta"

    def _load(self, rel: str) -> dict:
        name = self.require(rel)
        try:
            batch = _ArrayOnlyUnpickler(io.BytesIO(self.tree.read(name)), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise CnnbenchError(f"{self.tree.describe(name)}: not a CIFAR-10 python batch ({exc})") from None
        if not isinstance(batch, dict):
            raise CnnbenchError(f"{self.tree.describe(name)}: not a CIFAR-10 python batch (a pickled "
                                f"{type(batch).__name__}, expected a dict)")
        return batch

    def classes(self) -> list[ClassInfo]:
        names = self._load("batches.meta").get(b"label_names")
        if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, bytes) for n in names):
            raise CnnbenchError(f"{self.tree.describe(self.member('batches.meta'))}: expected 10 label_names")
        return [ClassInfo(id=n.decode(), name=n.decode(), synonyms=[n.decode()]) for n in names]

    def splits(self) -> list[RawSplit]:
        if not hasattr(self, "_arrays"):
            self._arrays = {}
            for split, batches in BATCHES.items():
                images, labels, files = [], [], []
                for rel in batches:
                    batch = self._load(rel)
                    where = self.tree.describe(self.member(rel))
                    data = np.asarray(batch.get(b"data"))
                    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                        raise CnnbenchError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072) = 32x32 RGB")
                    try:
                        batch_labels = np.asarray(batch.get(b"labels"), dtype=np.int64)
                    except (TypeError, ValueError):  # missing (None), or not numbers
                        batch_labels = None
                    if batch_labels is None or batch_labels.ndim != 1:
                        raise CnnbenchError(f"{where}: labels must be a list of class numbers 0-9, one per image")
                    if len(batch_labels) != len(data):
                        raise CnnbenchError(f"{where}: {len(data)} images but {len(batch_labels)} labels")
                    outside = batch_labels[(batch_labels < 0) | (batch_labels > 9)]
                    if outside.size:
                        raise CnnbenchError(f"{where}: label {int(outside[0])} is not one of the 10 classes")
                    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> (N, H, W, C)
                    labels.append(batch_labels)
                    names = batch.get(b"filenames") or [f"{rel}[{i}]".encode() for i in range(len(data))]
                    if len(names) != len(data):
                        raise CnnbenchError(f"{where}: {len(data)} images but {len(names)} filenames")
                    files += [(n.decode() if isinstance(n, bytes) else str(n), f"{rel}[{i}]") for i, n in enumerate(names)]
                self._arrays[split] = (np.concatenate(images), np.concatenate(labels), unique_names(files))
        return [RawSplit(split, files, labels) for split, (_i, labels, files) in self._arrays.items()]

    def decode(self, split: RawSplit, start: int, stop: int) -> DecodedChunk:
        images = self._arrays[split.name][0][start:stop]
        return DecodedChunk(images=images, is_gray=np.zeros(len(images), dtype=bool))
