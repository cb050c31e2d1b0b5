"""Tiny ImageNet-200 in its official layout, from tiny-imagenet-200.zip or the extracted folder.

    tiny-imagenet-200/wnids.txt                       class order (one WordNet id a line)
    tiny-imagenet-200/words.txt                       wnid <TAB> "name, synonym, ..." (82,115 entries)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG      <wnid>_<i>.JPEG
    tiny-imagenet-200/train/<wnid>/<wnid>_boxes.txt   file <TAB> x0 y0 x1 y1
    tiny-imagenet-200/val/images/val_<i>.JPEG
    tiny-imagenet-200/val/val_annotations.txt         file <TAB> wnid <TAB> x0 y0 x1 y1
    tiny-imagenet-200/test/images/test_<i>.JPEG       unlabelled (absent from some copies)
"""

from __future__ import annotations

import re

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.data.decode import decode_jpeg_batch
from cnnbench.data.readers import ClassInfo, DecodedChunk, RawSplit, Reader, register_reader

_INDEX = re.compile(r"_(\d+)\.JPEG$", re.IGNORECASE)


def _image_order(name: str) -> tuple[int, str]:
    """Sort key: the number in <wnid>_<i>.JPEG / val_<i>.JPEG, so 'the first N' means i < N."""
    match = _INDEX.search(name)
    return (int(match.group(1)) if match else -1, name)


@register_reader("tiny-imagenet")
class TinyImageNetReader(Reader):
    version = 1
    image_size = (64, 64)
    source_channels = 3
    eval_split = "val"
    marker = "wnids.txt"
    folder_names = ("tiny-imagenet-200",)
    archive_patterns = ("tiny-imagenet-200.zip", "tiny-imagenet-200*.zip", "tiny-imagenet*.zip")
    layout_hint = "tiny-imagenet-200.zip or its folder with wnids.txt, words.txt, train/<wnid>/images/, val/val_annotations.txt, val/images/"

    def classes(self) -> list[ClassInfo]:
        if not hasattr(self, "_classes"):
            wnids = [line.strip() for line in self.read_text("wnids.txt").splitlines() if line.strip()]
            if len(set(wnids)) != len(wnids):
                raise CnnbenchError(f"{self.tree.describe(self.member('wnids.txt'))}: a class id is listed twice")
            words = {}
            for line in self.read_text("words.txt").splitlines():
                wnid, _, names = line.partition("\t")
                words[wnid.strip()] = [n.strip() for n in names.split(",") if n.strip()]
            self._classes = [ClassInfo(id=w, name=(words.get(w) or [w])[0], synonyms=words.get(w, [])) for w in wnids]
        return self._classes

    def splits(self) -> list[RawSplit]:
        index = {c.id: i for i, c in enumerate(self.classes())}
        splits = [self._train_split(index), self._val_split(index)]
        test = sorted(self._jpegs("test/images/"), key=_image_order)
        if test:
            splits.append(RawSplit("test", [n[len(self.root):] for n in test], np.full(len(test), -1, dtype=np.int64)))
        return splits

    def _jpegs(self, rel: str) -> list[str]:
        """Member names of the .JPEG files below ``rel`` (not .DS_Store, Thumbs.db, ...)."""
        prefix = self.member(rel)
        return [n for n in self.tree.names() if n.startswith(prefix) and n.upper().endswith(".JPEG")]

    def _train_split(self, index: dict[str, int]) -> RawSplit:
        by_class: dict[str, list[str]] = {w: [] for w in index}
        prefix = self.member("train/")
        for name in self._jpegs("train/"):
            wnid = name[len(prefix):].split("/", 1)[0]
            if wnid not in by_class:
                raise CnnbenchError(f"{self.tree.describe(name)}: class folder {wnid!r} is not in wnids.txt")
            by_class[wnid].append(name[len(self.root):])
        files, labels, boxes = [], [], []
        for wnid, rels in by_class.items():
            if not rels:
                raise CnnbenchError(f"{self.location.path}: not the official {self.name} layout: missing "
                                    f"{self.member(f'train/{wnid}/images/')}*.JPEG for class {wnid} listed in wnids.txt")
            table = self._boxes(f"train/{wnid}/{wnid}_boxes.txt", wnid_column=False)
            for rel in sorted(rels, key=_image_order):
                files.append(rel)
                labels.append(index[wnid])
                boxes.append(table.get(rel.rsplit("/", 1)[-1], (-1, -1, -1, -1)))  # -1: no box given
        return RawSplit("train", files, np.asarray(labels, dtype=np.int64), np.asarray(boxes, dtype=np.int32).reshape(-1, 4))

    def _boxes(self, rel: str, wnid_column: bool) -> dict[str, tuple[int, ...]]:
        """file -> (x0, y0, x1, y1) from a boxes/annotations table."""
        table = {}
        where = self.tree.describe(self.member(rel))
        for number, line in enumerate(self.read_text(rel).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            coords = parts[2:6] if wnid_column else parts[1:5]
            if len(coords) != 4 or not all(c.lstrip("-").isdigit() for c in coords):
                raise CnnbenchError(f"{where} line {number}: expected 'file{' wnid' if wnid_column else ''} x0 y0 x1 y1', got {line.strip()!r}")
            table[parts[0]] = tuple(int(c) for c in coords)
        return table

    def _val_split(self, index: dict[str, int]) -> RawSplit:
        rel = "val/val_annotations.txt"
        where = self.tree.describe(self.member(rel))
        boxes = self._boxes(rel, wnid_column=True)
        labels_by_file, line_of = {}, {}
        for number, line in enumerate(self.read_text(rel).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if parts[1] not in index:
                raise CnnbenchError(f"{where} line {number}: class {parts[1]!r} of {parts[0]} is not in wnids.txt")
            if parts[0] in line_of:  # the last line would silently win, relabelling the image
                raise CnnbenchError(f"{where} line {number}: {parts[0]} is listed twice (line {line_of[parts[0]]} "
                                    f"and {number}); expected one line per val image")
            labels_by_file[parts[0]] = index[parts[1]]
            line_of[parts[0]] = number
        prefix = self.member("val/images/")
        present = {n[len(prefix):] for n in self._jpegs("val/images/")}
        for name in sorted(present - labels_by_file.keys(), key=_image_order)[:1]:
            raise CnnbenchError(f"{self.tree.describe(prefix + name)}: no label in {rel} (expected one line per val image)")
        for name in sorted(labels_by_file.keys() - present, key=_image_order)[:1]:
            raise CnnbenchError(f"{where}: lists {name}, but {prefix}{name} is missing from {self.location.path}")
        order = sorted(labels_by_file, key=_image_order)
        return RawSplit("val", [f"val/images/{n}" for n in order],
                        np.asarray([labels_by_file[n] for n in order], dtype=np.int64),
                        np.asarray([boxes[n] for n in order], dtype=np.int32).reshape(-1, 4))

    def decode(self, split: RawSplit, start: int, stop: int) -> DecodedChunk:
        rels = split.files[start:stop]
        blobs = [self.tree.read(self.member(r)) for r in rels]
        return decode_jpeg_batch(blobs, [self.tree.describe(self.member(r)) for r in rels], self.image_size)
