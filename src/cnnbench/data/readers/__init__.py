"""Readers: one per official file format, registered by dataset name.

A reader knows one dataset's files and nothing about caches, splits or tensors on a device: it
lists the classes and the splits (file names, labels, boxes) and decodes a range of one split
into uint8 arrays. ``cnnbench.data.cache`` turns that into the memory-mapped cache.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.data.sources import DatasetLocation, SourceTree, closed_on_error, open_tree, walk_files


@dataclass
class ClassInfo:
    """One class: its dataset id (a WordNet id, a digit), display name, and all synonyms."""

    id: str
    name: str
    synonyms: list[str] = field(default_factory=list)


@dataclass
class RawSplit:
    """A split as the source defines it, before decoding."""

    name: str
    files: list[str]
    """Source file names (relative to the dataset root), one per image."""
    labels: np.ndarray
    """int64 (N,), -1 for unlabelled images."""
    boxes: np.ndarray | None = None
    """int32 (N, 4) x0, y0, x1, y1 bounding boxes (-1 where the source gives none), or None."""


@dataclass
class DecodedChunk:
    """Images ``start:start+B`` of a split, decoded."""

    images: np.ndarray
    """uint8 (B, H, W, C): C is the reader's ``source_channels``; grayscale JPEGs are replicated to 3."""
    is_gray: np.ndarray
    """bool (B,): the source image had a single channel."""
    bad: dict[int, str] = field(default_factory=dict)
    """Row -> why it could not be used (undecodable, wrong size); those rows hold garbage."""


class Reader:
    """Base class: subclasses set the class attributes and implement the four methods."""

    name: str = ""
    version: int = 1
    """Bump when the decoded output changes; caches built by older versions are rebuilt."""
    image_size: tuple[int, int] = (0, 0)
    source_channels: int = 3
    eval_split: str = "val"
    """The labelled split that ``val_split='half'`` divides into val and test halves."""
    marker: str = ""
    """A file that identifies the dataset's root folder (e.g. wnids.txt)."""
    folder_names: tuple[str, ...] = ()
    """Official names of the extracted folder."""
    archive_patterns: tuple[str, ...] = ()
    """Archive file names, official name first (glob patterns)."""
    layout_hint: str = ""
    """One line describing the official layout, for error messages."""

    def __init__(self, location: DatasetLocation):
        self.location = location
        self.tree: SourceTree = open_tree(location.path)
        with closed_on_error(self.tree):
            self.root = self._find_root()

    # -- the interface --------------------------------------------------------------------
    def classes(self) -> list[ClassInfo]:
        raise NotImplementedError

    def splits(self) -> list[RawSplit]:
        raise NotImplementedError

    def decode(self, split: RawSplit, start: int, stop: int) -> DecodedChunk:
        raise NotImplementedError

    @classmethod
    def source_files(cls, location: DatasetLocation) -> list[Path]:
        """The files whose content defines the dataset (fingerprinted to key the cache)."""
        if location.path.is_file():
            return [location.path]
        return sorted(p for p in (location.path / name for name in walk_files(location.path)) if p.is_file())

    # -- helpers for subclasses -----------------------------------------------------------
    def _find_root(self) -> str:
        hits = [n for n in self.tree.names() if n == self.marker or n.endswith("/" + self.marker)]
        if not hits:
            raise CnnbenchError(f"{self.location.path}: not the official {self.name} layout: missing {self.marker} "
                                f"(expected {self.layout_hint})")
        top = min(hits, key=lambda n: n.count("/"))
        return top[: -len(self.marker)]

    def member(self, rel: str) -> str:
        return self.root + rel

    def require(self, rel: str) -> str:
        """The member name of ``rel``; a missing one is named in the error."""
        name = self.member(rel)
        if name not in self._name_set:
            raise CnnbenchError(f"{self.location.path}: not the official {self.name} layout: missing {name} "
                                f"(expected {self.layout_hint})")
        return name

    @functools.cached_property
    def _name_set(self) -> set[str]:
        return set(self.tree.names())

    def read_text(self, rel: str) -> str:
        name = self.require(rel)
        try:
            return self.tree.read(name).decode("utf-8")
        except UnicodeDecodeError:
            raise CnnbenchError(f"{self.tree.describe(name)}: expected UTF-8 text") from None

    def close(self) -> None:
        self.tree.close()


READERS: dict[str, type[Reader]] = {}


def register_reader(name: str) -> Callable[[type[Reader]], type[Reader]]:
    """Class decorator: register a reader under a dataset name (duplicates raise)."""

    def wrap(cls: type[Reader]) -> type[Reader]:
        if name in READERS:
            raise ValueError(f"reader {name!r} registered twice")
        cls.name = name
        READERS[name] = cls
        return cls

    return wrap


def get_reader(name: str) -> type[Reader]:
    """The reader class for a dataset name."""
    from cnnbench.data.readers import cifar10, mnist, tiny_imagenet  # noqa: F401  (registers them)

    if name not in READERS:
        raise CnnbenchError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(READERS))}")
    return READERS[name]


def dataset_names() -> list[str]:
    get_reader("tiny-imagenet")
    return sorted(READERS)


def _folder_holds_marker(folder: Path, marker: str) -> bool:
    return (folder / marker).exists() or (folder / (marker + ".gz")).exists()


def locate(reader: type[Reader], paths: list[Path], explicit: bool) -> DatasetLocation:
    """Find the dataset in the first path that holds it: an archive, its folder, or a folder holding them.

    ``explicit`` means the user named the path (--data): a path that holds nothing usable is then
    an error that says what was expected there, rather than a reason to look elsewhere.
    """
    for path in paths:
        if not path.exists():
            if explicit:
                raise CnnbenchError(f"{path}: no such file or folder (expected {reader.layout_hint})")
            continue
        if path.is_file():
            return DatasetLocation(path, "")
        for folder in (path, *(path / n for n in reader.folder_names)):
            if folder.is_dir() and _folder_holds_marker(folder, reader.marker):
                return DatasetLocation(folder, "")
        archive = _match_archive(reader, path)
        if archive is not None:
            return DatasetLocation(archive, "")
        if explicit:
            raise CnnbenchError(f"{path}: no {reader.name} found: missing {reader.marker} "
                                f"(expected {reader.layout_hint})")
    searched = ", ".join(str(p) for p in paths)
    raise CnnbenchError(f"no {reader.name} data found (searched {searched}); pass --data PATH, set CNNBENCH_DATA, "
                        f"or run `cnnbench data download {reader.name}`")


def _match_archive(reader: type[Reader], folder: Path) -> Path | None:
    files = sorted(os.listdir(folder))
    for pattern in reader.archive_patterns:
        hits = [f for f in files if fnmatch.fnmatch(f, pattern) and (folder / f).is_file()]
        if len(hits) == 1:
            return folder / hits[0]
        if len(hits) > 1:
            raise CnnbenchError(f"{folder}: several {reader.name} archives ({', '.join(hits)}); pass the one to use with --data")
    return None
