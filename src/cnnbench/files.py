"""The one atomic file writer: every file cnnbench writes for a user goes through it; and the
YAML reader every recipe, option and settings file goes through.

A checkpoint, a cache manifest, a report page or a bench result is either the complete new file
or the previous one, never half of each: the content goes to a temporary name in the same
folder, is fsynced, then renamed into place. Plain ``open`` makes the temporary file, so the
result gets the usual permissions (the umask's), not ``mkstemp``'s owner-only 0600.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from cnnbench.errors import CnnbenchError


def make_folder(path: Path, what: str, expected: str = "") -> Path:
    """``mkdir -p`` that turns a file on the way or a missing permission into a one-line error."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnbenchError(f"{path}: cannot create {what} ({exc.strerror}){expected}") from None
    return Path(path)


def check_writable(option: str, path) -> None:
    """Refuse an output ``path`` that is a folder or whose folder cannot take a new file: before the
    work that produces it (a benchmark, an export), not after."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise CnnbenchError(f"{option} {path}: is a folder; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise CnnbenchError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Write a file through a temporary name in the same folder, fsync it, then rename it into place.

    ``write(tmp_path)`` produces the content; a failure (or an interrupt) leaves the previous file
    under ``path`` untouched and no temporary file behind.
    """
    path = Path(path)
    make_folder(path.parent, f"the folder for {path.name}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """Atomically write a text file."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (``1e-4``) as numbers.

    PyYAML follows YAML 1.1, where ``1e-4`` is the string '1e-4' (only ``1.0e-4`` is a float);
    YAML 1.2, JSON and Python read it as 0.0001, and so does everyone typing a learning rate.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text safely (no object construction), with ``1e-4`` read as a number."""
    return yaml.load(text, Loader=_Loader)
