"""The one atomic file writer: every file cnnbench writes for a user goes through it.

A checkpoint, a cache manifest, a report page or a bench result is either the complete new file
or the previous one, never half of each: the content goes to a temporary name in the same
folder, is fsynced, then renamed into place. Plain ``open`` makes the temporary file, so the
result gets the usual permissions (the umask's), not ``mkstemp``'s owner-only 0600.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Write a file through a temporary name in the same folder, fsync it, then rename it into place.

    ``write(tmp_path)`` produces the content; a failure (or an interrupt) leaves the previous file
    under ``path`` untouched and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
