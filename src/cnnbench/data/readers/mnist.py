"""MNIST from the four original idx files, gzipped or raw.

idx format (LeCun): big-endian magic 0x00000803 (uint8, 3 dims) for images, 0x00000801 for
labels, then one big-endian uint32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.data.readers import ClassInfo, DecodedChunk, RawSplit, Reader, register_reader
from cnnbench.data.sources import DatasetLocation

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def parse_idx(data: bytes, where: str, dims: int) -> np.ndarray:
    """An idx array of uint8 with ``dims`` dimensions; truncated or mistyped files are named."""
    magic = 0x800 + dims
    if int.from_bytes(data[:4], "big") == magic and len(data) < 4 + 4 * dims:
        raise CnnbenchError(f"{where}: truncated: {len(data)} bytes, shorter than the {4 + 4 * dims}-byte idx header")
    if len(data) < 4 + 4 * dims or int.from_bytes(data[:4], "big") != magic:
        got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise CnnbenchError(f"{where}: not an idx file of uint8 with {dims} dimension(s) "
                            f"(magic {got!r}, expected {magic})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise CnnbenchError(f"{where}: truncated or padded: {body.size} bytes of data, expected {int(np.prod(shape))} for shape {shape}")
    return body.reshape(shape)


@register_reader("mnist")
class MnistReader(Reader):
    version = 1
    image_size = (28, 28)
    source_channels = 1
    eval_split = "test"
    marker = "train-images-idx3-ubyte"
    folder_names = ("mnist", "MNIST/raw", "MNIST")
    archive_patterns = ()
    layout_hint = "a folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"

    def _find_root(self) -> str:
        names = set(self.tree.names())
        for name in sorted(names, key=lambda n: n.count("/")):
            stem = name[:-3] if name.endswith(".gz") else name
            if stem == self.marker or stem.endswith("/" + self.marker):
                return stem[: -len(self.marker)]
        raise CnnbenchError(f"{self.location.path}: not the official mnist layout: missing {self.marker}.gz "
                            f"(expected {self.layout_hint})")

    def _read_idx(self, stem: str, dims: int) -> np.ndarray:
        names = set(self.tree.names())
        for candidate in (self.member(stem + ".gz"), self.member(stem)):
            if candidate in names:
                where = self.tree.describe(candidate)
                data = self.tree.read(candidate)
                if candidate.endswith(".gz"):
                    try:
                        data = gzip.decompress(data)
                    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged deflate data
                        raise CnnbenchError(f"{where}: not a complete gzip file ({exc})") from None
                return parse_idx(data, where, dims)
        raise CnnbenchError(f"{self.location.path}: not the official mnist layout: missing {self.member(stem)}.gz "
                            f"(expected {self.layout_hint})")

    @classmethod
    def source_files(cls, location: DatasetLocation) -> list[Path]:
        if location.path.is_file():
            return [location.path]
        found = []
        for stems in FILES.values():
            for stem in stems:
                found += [p for p in (location.path / (stem + ".gz"), location.path / stem) if p.exists()][:1]
        return found

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(id=str(d), name=str(d), synonyms=[str(d), DIGITS[d]]) for d in range(10)]

    def splits(self) -> list[RawSplit]:
        if not hasattr(self, "_arrays"):
            self._arrays = {}
            for split, (images_stem, labels_stem) in FILES.items():
                images = self._read_idx(images_stem, 3)
                labels = self._read_idx(labels_stem, 1).astype(np.int64)
                if len(images) != len(labels):
                    raise CnnbenchError(f"{self.location.path}: {images_stem} holds {len(images)} images but "
                                        f"{labels_stem} {len(labels)} labels")
                if labels.size and labels.max() > 9:
                    raise CnnbenchError(f"{self.tree.describe(self.member(labels_stem))}: label {int(labels.max())} "
                                        "is not a digit class 0-9")
                if images.shape[1:] != self.image_size:
                    raise CnnbenchError(f"{self.tree.describe(self.member(images_stem))}: images are "
                                        f"{images.shape[2]}x{images.shape[1]}, expected 28x28")
                self._arrays[split] = (images, labels)
        return [RawSplit(split, [f"{FILES[split][0]}[{i}]" for i in range(len(labels))], labels)
                for split, (_images, labels) in self._arrays.items()]

    def decode(self, split: RawSplit, start: int, stop: int) -> DecodedChunk:
        images = self._arrays[split.name][0][start:stop, :, :, None]  # (B, 28, 28) -> (B, 28, 28, 1)
        return DecodedChunk(images=images, is_gray=np.ones(len(images), dtype=bool))
