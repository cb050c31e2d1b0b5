"""The decoded cache: every image decoded once into a memory-mapped uint8 array.

One cache folder per (dataset, source content, reader version, decode options):

    $CNNBENCH_HOME/cache/<dataset>-<grayscale>[-skipbad]-<key>/
        manifest.json          source fingerprint, reader version, options, counts, stats, content hash
        classes.json           [{"id", "name", "synonyms"}] in label order
        <split>_images.npy     uint8 (N, H, W, C), opened with mmap_mode="r"
        <split>_labels.npy     int64 (N,), -1 for unlabelled
        <split>_files.json     source file names
        <split>_boxes.npy      int32 (N, 4) where the dataset has boxes
        excluded.json          images left out (grayscale under 'drop', bad under --skip-bad), with labels
        stats.npz              channel_mean, channel_std, pixel_mean of the train split (0-1 scale)

The folder is built under a temporary name beside its final one and renamed into place with
``os.replace`` as the last step, so a folder with the final name is always complete: an
interrupted or failed prepare leaves only a temporary folder, which is removed on the way out
(or by the next prepare, if the process was killed).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.files import make_folder, write_bytes
from cnnbench.data.readers import DecodedChunk, RawSplit, Reader
from cnnbench.data.sources import DatasetLocation, closed_on_error, cnnbench_home
from cnnbench.data.stats import RunningStats

CACHE_FORMAT = 1
CHUNK = 512  # images decoded and written per step: ~6 MB of 64x64x3, small next to the cache
TMP_PREFIX = ".tmp-"


def cache_root() -> Path:
    return cnnbench_home() / "cache"


# -- source fingerprints ----------------------------------------------------------------------

def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once and remembered by (path, size, mtime) in $CNNBENCH_HOME.

    A 56 MB zip takes ~0.15 s to hash; remembering it keeps ``load_dataset`` on a prepared cache
    at a stat() call. A changed size or modification time means the file is hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo_path = cnnbench_home() / "source-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(str(path))
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    sha = _hash_file(path)
    memo[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    try:
        write_bytes(memo_path, json.dumps(memo, indent=1).encode())
    except OSError:
        pass  # the memo only saves time; a read-only home just means hashing again next time
    return sha


def source_fingerprint(files: list[Path], root: Path) -> str:
    """Content hash of a few files, or of (name, size, mtime) for a large extracted folder.

    Hashing the content of an extracted Tiny ImageNet (120,000 small files) would cost as much as
    decoding it; a listing with sizes and modification times catches any copy or edit.
    """
    if not files:
        raise CnnbenchError(f"{root}: no dataset files found")
    digest = hashlib.sha256()
    if len(files) <= 16:
        for f in files:
            digest.update(f"{f.name}\t{file_sha256(f)}\n".encode())
    else:
        for f in files:
            st = f.stat()
            digest.update(f"{f.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# -- small file helpers ------------------------------------------------------------------------

def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_rows(f, offset: int, rows: np.ndarray) -> None:
    """Write C-contiguous rows at ``offset`` (one function so tests can simulate a full disk here)."""
    f.seek(offset)
    f.write(np.ascontiguousarray(rows).data)


# -- grayscale policies -----------------------------------------------------------------------

def _luma(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) -> (B, H, W, 1) with ITU-R 601 weights (as PIL 'L' and torchvision rgb_to_grayscale)."""
    if images.shape[-1] == 1:
        return images
    y = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def _to_rgb(images: np.ndarray) -> np.ndarray:
    return images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)


@dataclass(frozen=True)
class GrayscalePolicy:
    channels: int
    keep_gray: bool
    convert: Callable[[np.ndarray], np.ndarray]


GRAYSCALE_POLICIES = {
    "replicate": GrayscalePolicy(channels=3, keep_gray=True, convert=_to_rgb),
    "drop": GrayscalePolicy(channels=3, keep_gray=False, convert=_to_rgb),
    "gray": GrayscalePolicy(channels=1, keep_gray=True, convert=_luma),
}


# -- building ---------------------------------------------------------------------------------

@dataclass
class CacheOptions:
    grayscale: str = "replicate"
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.grayscale not in GRAYSCALE_POLICIES:
            raise CnnbenchError(f"grayscale: expected one of {', '.join(GRAYSCALE_POLICIES)}, got {self.grayscale!r}")

    def as_dict(self) -> dict:
        return {"grayscale": self.grayscale, "skip_bad": self.skip_bad}


def cache_key(reader: type[Reader], fingerprint: str, options: CacheOptions) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "dataset": reader.name, "reader_version": reader.version,
                       "source": fingerprint, "options": options.as_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_dir_for(reader: type[Reader], fingerprint: str, options: CacheOptions) -> Path:
    suffix = "-skipbad" if options.skip_bad else ""
    return cache_root() / f"{reader.name}-{options.grayscale}{suffix}-{cache_key(reader, fingerprint, options)[:12]}"


class _SplitWriter:
    """Writes one split into a preallocated .npy file, chunk by chunk, applying the grayscale policy."""

    def __init__(self, folder: Path, split: RawSplit, size: tuple[int, int], policy: GrayscalePolicy,
                 skip_bad: bool, stats: RunningStats | None):
        self.folder, self.split, self.policy, self.skip_bad, self.stats = folder, split, policy, skip_bad, stats
        self.row_shape = (*size, policy.channels)
        self.row_bytes = int(np.prod(self.row_shape))
        self.path = folder / f"{split.name}_images.npy"
        self.header = _npy_header((len(split.files), *self.row_shape))
        self.file = open(self.path, "wb")
        with closed_on_error(self.file):  # the caller has no writer to abort() yet
            self.file.write(self.header)
            total = len(self.header) + len(split.files) * self.row_bytes
            # Reserve the disk space now, so a full disk fails before minutes of decoding.
            if hasattr(os, "posix_fallocate") and len(split.files):
                try:
                    os.posix_fallocate(self.file.fileno(), 0, total)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise  # ENOSPC among them; a file system that cannot reserve just writes as it goes
        self.kept: list[int] = []
        self.gray_count = 0
        self.excluded: list[dict] = []

    def add(self, start: int, chunk: DecodedChunk) -> None:
        rows = np.arange(start, start + len(chunk.images))
        keep = np.ones(len(rows), dtype=bool)
        for row, reason in chunk.bad.items():
            if not self.skip_bad:
                raise CnnbenchError(f"{reason} (use --skip-bad to skip and count bad images)")
            keep[row] = False
            self._exclude(rows[row], "bad", reason)
        good_gray = chunk.is_gray & keep
        self.gray_count += int(good_gray.sum())
        if not self.policy.keep_gray:
            for row in np.flatnonzero(good_gray):
                self._exclude(rows[row], "grayscale", "")
            keep &= ~chunk.is_gray
        images = self.policy.convert(chunk.images[keep])
        write_rows(self.file, len(self.header) + len(self.kept) * self.row_bytes, images)
        if self.stats is not None:
            self.stats.update(images)
        self.kept += rows[keep].tolist()

    def _exclude(self, row: int, reason: str, detail: str) -> None:
        self.excluded.append({"split": self.split.name, "file": self.split.files[row],
                              "label": int(self.split.labels[row]), "reason": reason, "detail": detail})

    def finish(self) -> dict:
        """Shrink the array to the kept rows, write labels/files/boxes; returns the split's counts."""
        n = len(self.kept)
        header = _npy_header((n, *self.row_shape))
        # numpy pads .npy headers with room for a longer first dimension, so the header keeps its length.
        assert len(header) == len(self.header), "npy header length changed"
        self.file.seek(0)
        self.file.write(header)
        self.file.truncate(len(header) + n * self.row_bytes)
        self.file.close()
        kept = np.asarray(self.kept, dtype=np.int64)
        np.save(self.folder / f"{self.split.name}_labels.npy", self.split.labels[kept])
        if self.split.boxes is not None:
            np.save(self.folder / f"{self.split.name}_boxes.npy", self.split.boxes[kept])
        files = [self.split.files[i] for i in kept]
        (self.folder / f"{self.split.name}_files.json").write_text(json.dumps(files))
        return {"count": n, "source_count": len(self.split.files), "grayscale": self.gray_count,
                "dropped": sum(e["reason"] == "grayscale" for e in self.excluded),
                "skipped": sum(e["reason"] == "bad" for e in self.excluded)}

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False)


def build_cache(reader_cls: type[Reader], location: DatasetLocation, fingerprint: str, options: CacheOptions,
                dest: Path, progress: bool = False, replace: bool = False) -> Path:
    """Decode the whole dataset into ``dest`` (atomically); returns the folder holding the cache.

    ``replace`` swaps out an existing cache at ``dest`` (``prepare --force``); the old one is only
    removed once the new one is complete.
    """
    started = time.perf_counter()
    make_folder(dest.parent, "the cache folder", "; expected a writable folder (set CNNBENCH_HOME)")
    _remove_stale_temporaries(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache is as readable as the data it came from
    writer = None
    try:
        reader = reader_cls(location)
        try:
            classes = reader.classes()
            splits = reader.splits()
            policy = GRAYSCALE_POLICIES[options.grayscale]
            if not policy.keep_gray and reader.source_channels == 1:
                raise CnnbenchError(f"grayscale=drop: every {reader.name} image is grayscale, nothing would be left; "
                                    "use grayscale=gray (1 channel) or replicate (3 channels)")
            counts, excluded, stats = {}, [], RunningStats()
            bar = _progress(sum(len(s.files) for s in splits), progress, f"prepare {reader.name}")
            for split in splits:
                writer = _SplitWriter(tmp, split, reader.image_size, policy, options.skip_bad,
                                      stats if split.name == "train" else None)
                for start in range(0, len(split.files), CHUNK):
                    stop = min(start + CHUNK, len(split.files))
                    writer.add(start, reader.decode(split, start, stop))
                    bar.update(stop - start)
                counts[split.name] = writer.finish()
                excluded += writer.excluded
                writer = None
            bar.close()
        finally:
            reader.close()
        if counts.get("train", {}).get("count", 0) == 0:
            raise CnnbenchError(f"{location.path}: no usable training images")
        train_stats = stats.result()
        np.savez(tmp / "stats.npz", **train_stats)
        (tmp / "classes.json").write_text(json.dumps([c.__dict__ for c in classes], indent=0))
        (tmp / "excluded.json").write_text(json.dumps(excluded))
        manifest = {
            "format": CACHE_FORMAT,
            "dataset": reader_cls.name,
            "reader_version": reader_cls.version,
            "source": {"path": str(location.path), "fingerprint": fingerprint},
            "options": options.as_dict(),
            "image_size": list(reader_cls.image_size),
            "channels": policy.channels,
            "num_classes": len(classes),
            "splits": counts,
            "stats": {k: train_stats[k].tolist() for k in ("channel_mean", "channel_std")},
        }
        # what the cache holds, whatever folder the source sat in: the path is left out
        content = {k: v for k, v in manifest.items() if k != "source"} | {"source": fingerprint}
        manifest["content_hash"] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        manifest["bytes"] = sum(f.stat().st_size for f in tmp.iterdir())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        old = None
        if replace and dest.exists():
            old = dest.with_name(f"{TMP_PREFIX}old-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (dest / "manifest.json").exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same cache first; use theirs
        if old is not None:
            # only now that the new cache is in place: while a large cache is being deleted, another
            # process must find one at dest, not build its own or read a half-deleted folder.
            # Open memory maps of the old files stay valid on POSIX.
            shutil.rmtree(old, ignore_errors=True)
        return dest
    except OSError as exc:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(dest.parent).free
            raise CnnbenchError(f"{dest.parent}: disk full while writing the {reader_cls.name} cache "
                                f"({free / 2**20:.0f} MB free); nothing was kept — free space or set CNNBENCH_HOME "
                                "to a larger disk") from None
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temporaries(folder: Path, older_than_s: float = 6 * 3600) -> None:
    """Temporary folders of prepares that were killed (SIGKILL skips cleanup); old ones only,
    so a prepare running in another process right now is left alone."""
    now = time.time()
    for entry in folder.glob(f"{TMP_PREFIX}*"):
        try:
            if now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a finished cache folder, or None when there is none."""
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
