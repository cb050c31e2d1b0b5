"""The data paths cnnbench is measured against: JPEG files on disk, decoded every epoch.

(b) is what the reports and most tutorials do: torchvision ``ImageFolder`` opens each JPEG
with PIL, per-image ``transforms`` augment it, and ``DataLoader(num_workers=2)`` batches it.
(c) decodes the same files every epoch with ``torchvision.io.decode_jpeg`` on whole batches
(libjpeg-turbo, no PIL), then augments the batch like cnnbench does; it isolates the cost of
decoding from the cost of per-image Python work.

Both read an extracted copy of the archive's ``train/`` tree (``ImageFolder`` needs files),
made once under ``$CNNBENCH_HOME/bench/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cnnbench.errors import CnnbenchError

TRAIN_FOLDER = "train/"


def locate_archive(data: str | None) -> Path:
    """The Tiny ImageNet archive or extracted folder: ``data`` itself, or found inside it.

    Searched like the data layer does (--data, then $CNNBENCH_DATA, then the downloads
    folder); inside a folder, the official ``tiny-imagenet-200.zip`` is preferred to a reduced
    ``tiny-imagenet-200-*.zip``, and an extracted ``tiny-imagenet-200/`` folder is accepted.
    """
    from cnnbench.data.sources import search_paths

    searched = search_paths(data)
    for place in searched:
        if place.is_file():
            return place
        for pattern in ("tiny-imagenet-200.zip", "tiny-imagenet-200*.zip", "tiny-imagenet-200"):
            found = sorted(place.glob(pattern)) if place.is_dir() else []
            if found:
                return found[0]
        if (place / "wnids.txt").is_file():
            return place
    raise CnnbenchError(f"Tiny ImageNet not found in {', '.join(map(str, searched))}: expected "
                        "tiny-imagenet-200*.zip or an extracted tiny-imagenet-200/ folder (set --data or CNNBENCH_DATA)")


def extract_train_tree(source: Path, target_root: Path, per_class: int | None = None) -> Path:
    """Copy the Tiny ImageNet ``train/`` JPEGs of ``source`` into an ImageFolder tree.

    ``source`` is the archive or an extracted folder. Returns ``target_root/<name>[-N]/train``
    holding ``<wnid>/images/*.JPEG`` (the official layout, which ``ImageFolder`` reads as one
    class per ``<wnid>``). With ``per_class`` only the first N images of each class (by file
    number) are kept, like ``load_dataset(train_per_class=N)``. The tree is built under a
    temporary name and renamed into place, so an interrupted copy is never mistaken for a
    complete one; the data layer's ``open_tree`` refuses members that would escape the target.
    """
    from cnnbench.data.sources import open_tree

    source = Path(source)
    name = source.name.removesuffix(".zip") + (f"-{per_class}" if per_class else "")
    final = Path(target_root) / name
    if (final / "train").is_dir():
        return final / "train"
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        with open_tree(source) as tree:
            members = _train_members(tree.names())
            if not members:
                raise CnnbenchError(f"{source}: no train/<wnid>/images/*.JPEG files; not Tiny ImageNet")
            for member, relative in _first_per_class(members, per_class):
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(tree.read(member))
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final / "train"


def _train_members(names: list[str]) -> list[tuple[str, str]]:
    """(member name, path from the dataset root) of every training JPEG, whatever the prefix."""
    found = []
    for member in names:
        head, sep, tail = member.partition(TRAIN_FOLDER)
        if sep and tail.endswith(".JPEG") and "/images/" in tail and (head == "" or head.endswith("/")):
            found.append((member, TRAIN_FOLDER + tail))
    return found


def _first_per_class(members: list[tuple[str, str]], per_class: int | None) -> list[tuple[str, str]]:
    """Members ordered by (class, image number), keeping at most ``per_class`` per class."""
    def key(item: tuple[str, str]) -> tuple[str, int]:
        wnid, _, file = item[1][len(TRAIN_FOLDER):].partition("/images/")
        return wnid, int(file.rsplit("_", 1)[1].split(".")[0])

    kept, counts = [], {}
    for item in sorted(members, key=key):
        wnid = key(item)[0]
        counts[wnid] = counts.get(wnid, 0) + 1
        if per_class is None or counts[wnid] <= per_class:
            kept.append(item)
    return kept


def imagefolder_loader(train_dir: Path, batch_size: int, mean, std, num_workers: int = 2, seed: int = 0,
                       augment: bool = True, input_size: int = 64):
    """(b): ``ImageFolder`` + PIL + per-image transforms + ``DataLoader(num_workers)`` at ``input_size`` px.

    The augmentation matches ``standard_augment()`` (reflect-pad 4 and crop, horizontal flip)
    so both paths do the same work (``augment=False``: ToTensor + Normalize only); images are
    converted to RGB because ~2% of Tiny ImageNet is grayscale. Another ``input_size`` than the
    files' 64 px resizes after augmenting (bilinear, antialiased), as ``BatchPipeline`` does. Workers are persistent (started once, not per epoch): the kindest setting
    for this path, so its ratio to cnnbench is not inflated by start-up costs.
    """
    import torch
    from torchvision import datasets, transforms

    flip_crop = [transforms.RandomCrop(64, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
    resize = [transforms.Resize((input_size, input_size), antialias=True)] if input_size != 64 else []
    transform = transforms.Compose((flip_crop if augment else []) + [transforms.ToTensor()] + resize + [
        transforms.Normalize(mean, std),
    ])
    dataset = datasets.ImageFolder(str(train_dir), transform=transform, loader=_pil_rgb)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=num_workers, persistent_workers=num_workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def _pil_rgb(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def list_jpegs(train_dir: Path) -> tuple[list[str], list[int]]:
    """The files and labels of an ImageFolder tree, in ImageFolder's order."""
    from torchvision import datasets

    classes, index = datasets.folder.find_classes(str(train_dir))
    samples = datasets.folder.make_dataset(str(train_dir), index, extensions=(".jpeg",))
    return [path for path, _ in samples], [label for _, label in samples]


def decode_jpeg_batches(files: list[str], batch_size: int, seed: int = 0):
    """(c): yield uint8 (B, 3, H, W) batches decoded from the files with ``torchvision.io``.

    Files are read and decoded each time the generator runs (one epoch), in a shuffled order;
    ``decode_jpeg`` takes the whole list at once and ``ImageReadMode.RGB`` replicates grayscale.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, len(order) - batch_size + 1, batch_size):
        data = [read_file(files[i]) for i in order[start:start + batch_size]]
        yield torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))
