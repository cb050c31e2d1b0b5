"""Where the raw files are, and uniform read access to them whatever their container.

A dataset arrives as an archive (zip, tar.gz), an extracted folder, or a folder holding either.
``SourceTree`` gives readers one interface over all three — list the member names, read one
member's bytes — so a reader knows file formats and nothing about containers (timm keeps
readers apart from transforms the same way). Nothing here extracts: the readers stream the
members straight out of the archive, and the archive trees refuse any member whose path would
leave the dataset's folder (``../``, absolute paths) when they open it; tar links are never read.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from cnnbench.errors import CnnbenchError


def cnnbench_home() -> Path:
    """Root for caches, downloads and split files: $CNNBENCH_HOME or ~/.cache/cnnbench."""
    return Path(os.environ.get("CNNBENCH_HOME") or Path.home() / ".cache" / "cnnbench").expanduser()


def downloads_dir() -> Path:
    """Where ``cnnbench data download`` puts archives (searched last when locating a dataset)."""
    return cnnbench_home() / "downloads"


def check_member_name(archive: Path, name: str) -> None:
    """Reject a member whose path would land outside the folder it is extracted into (zip-slip)."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise CnnbenchError(f"{archive}: entry {name!r} would escape the target folder; refusing to read this archive")


@contextlib.contextmanager
def closed_on_error(resource) -> Iterator[None]:
    """Close ``resource`` if the block raises: a refused archive or writer is not left open
    for as long as the error's traceback lives (an interactive session keeps the last one)."""
    try:
        yield
    except BaseException:
        resource.close()
        raise


def _unreadable_tar(path: Path, exc: BaseException) -> CnnbenchError:
    return CnnbenchError(f"{path}: not a readable tar archive ({exc}); expected a complete .tar.gz — download it again")


class SourceTree:
    """Read-only view of the files of a dataset: ``names()`` lists posix paths, ``read(name)`` returns bytes."""

    path: Path

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def describe(self, name: str) -> str:
        """How to name one member in an error message (archive path + member)."""
        return f"{self.path}:{name}" if self.path.is_file() else str(self.path / name)

    def close(self) -> None:
        pass

    def __enter__(self) -> "SourceTree":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def walk_files(top: Path) -> list[str]:
    """Posix paths, relative to ``top``, of everything below it that is not a folder.

    Symlinked folders are followed (a big train/ often lives on another disk), each real
    folder once, so a link back up the tree cannot loop.
    """
    found, seen = [], set()
    for root, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        rel = os.path.relpath(root, top)
        found += [f if rel == "." else posixpath.join(Path(rel).as_posix(), f) for f in files]
    return found


class FolderTree(SourceTree):
    def __init__(self, path: Path):
        self.path = path
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(walk_files(self.path))
        return self._names

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as exc:
            raise CnnbenchError(f"{self.path / name}: cannot read ({exc.strerror})") from None


class ZipTree(SourceTree):
    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise CnnbenchError(f"{path}: not a readable zip archive (truncated or corrupt?); "
                                "expected a complete zip file — download it again") from None
        except OSError as exc:
            raise CnnbenchError(f"{path}: cannot open ({exc.strerror})") from None
        self._names = [n for n in self._zip.namelist() if not n.endswith("/")]
        with closed_on_error(self):
            for name in self._names:
                check_member_name(path, name)

    def names(self) -> list[str]:
        return self._names

    def read(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:  # zlib.error: damaged deflate data
            raise CnnbenchError(f"{self.describe(name)}: cannot read this entry ({exc}); the archive is truncated or corrupt") from None

    def close(self) -> None:
        self._zip.close()


class TarTree(SourceTree):
    def __init__(self, path: Path):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _unreadable_tar(path, exc) from None
        with closed_on_error(self):
            try:
                members = self._tar.getmembers()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise _unreadable_tar(path, exc) from None
            self._members = {m.name: m for m in members if m.isfile()}
            for name in self._members:
                check_member_name(path, name)

    def names(self) -> list[str]:
        return sorted(self._members)

    def read(self, name: str) -> bytes:
        try:
            handle = self._tar.extractfile(self._members[name])
            return handle.read()
        except (tarfile.TarError, EOFError, OSError, KeyError, zipfile.BadZipFile) as exc:
            raise CnnbenchError(f"{self.describe(name)}: cannot read this entry ({exc}); the archive is truncated or corrupt") from None

    def close(self) -> None:
        self._tar.close()


def open_tree(path: Path) -> SourceTree:
    """A ``SourceTree`` for a folder, a .zip or a .tar(.gz) file."""
    if path.is_dir():
        return FolderTree(path)
    if not path.exists():
        raise CnnbenchError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".zip":
        return ZipTree(path)
    if path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
        return TarTree(path)
    raise CnnbenchError(f"{path}: expected a .zip or .tar.gz archive or a folder")


@dataclass(frozen=True)
class DatasetLocation:
    """A located dataset: the archive or folder, and the prefix of its files inside it."""

    path: Path
    """The archive file or folder that holds the dataset."""
    root: str
    """Posix prefix of the dataset's files inside ``path`` ('' when they sit at the top)."""


def search_paths(data: str | os.PathLike | None) -> list[Path]:
    """The places searched for a dataset, in order: --data, $CNNBENCH_DATA, the downloads folder."""
    if data is not None:
        return [Path(data).expanduser()]
    paths = []
    if os.environ.get("CNNBENCH_DATA"):
        paths.append(Path(os.environ["CNNBENCH_DATA"]).expanduser())
    paths.append(downloads_dir())
    return paths
