"""``cnnbench data download``: the official files, checksummed, resumable, or imported by hand.

The table of official files (URLs, md5, sizes) is data: ``downloads.yaml`` beside this module.
Downloads land in ``<dest>/<name>.part`` and are renamed only after the checksum matched, so a
file with the official name is always complete; an interrupted download resumes from the
``.part`` file with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from cnnbench.errors import CnnbenchError
from cnnbench.files import make_folder
from cnnbench.data.sources import downloads_dir

BLOCK = 1 << 20


@dataclass(frozen=True)
class OfficialFile:
    name: str
    md5: str
    size: int
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DownloadSpec:
    dataset: str
    folder: str
    """Subfolder of the destination the files go into ('' for the destination itself)."""
    files: tuple[OfficialFile, ...]


def official_files() -> dict[str, DownloadSpec]:
    table = yaml.safe_load(resources.files("cnnbench.data").joinpath("downloads.yaml").read_text())
    return {name: DownloadSpec(name, entry["folder"],
                               tuple(OfficialFile(f["name"], f["md5"], f["size"], tuple(f["urls"])) for f in entry["files"]))
            for name, entry in table.items()}


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, official: OfficialFile, origin: str) -> None:
    got = md5_of(path)
    if got != official.md5:
        raise CnnbenchError(f"{origin}: checksum mismatch for {official.name}: md5 {got}, expected {official.md5} "
                            f"(size {path.stat().st_size}, official {official.size}); the file was not kept")


def _manual_hint(spec: DownloadSpec, official: OfficialFile, target: Path) -> str:
    return (f"download {official.urls[0]} by hand and put it at {target} "
            f"(or run `cnnbench data download {spec.dataset} --from FILE`, or point --data PATH / data.path at a copy you have)")


def fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing a partial file with an HTTP Range request."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the partial file is already whole
            return
        raise
    with response:
        if response.status == 206:
            mode, start = "ab", have
        else:  # the server ignored the Range header: start over
            mode, start = "wb", 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                           desc=part.name.removesuffix(".part"), disable=not progress) as bar:
            for block in iter(lambda: response.read(BLOCK), b""):
                out.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def download_file(spec: DownloadSpec, official: OfficialFile, folder: Path, mirror: str | None,
                  timeout: float, progress: bool) -> Path:
    target = folder / official.name
    part = folder / (official.name + ".part")
    urls = (mirror.rstrip("/") + "/" + official.name,) if mirror else official.urls
    errors = []
    for url in urls:
        try:
            fetch(url, part, timeout, progress)
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url}: {reason}")
            continue
        try:
            _verify(part, official, url)
        except CnnbenchError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return target
    kept = f"; {part.stat().st_size} bytes kept in {part}, run again to resume" if part.exists() and part.stat().st_size else ""
    raise CnnbenchError(f"cannot download {official.name} ({'; '.join(errors)}){kept}; offline? "
                        + _manual_hint(spec, official, target))


def import_file(spec: DownloadSpec, source: Path, folder: Path) -> Path:
    """Copy a local file into the downloads folder; an official file name must carry the official checksum."""
    official = {f.name: f for f in spec.files}.get(source.name)
    target = folder / source.name
    tmp = folder / (source.name + ".part")
    try:
        shutil.copyfile(source, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CnnbenchError(f"{source}: cannot copy ({exc.strerror})") from None
    if official is not None:
        try:
            _verify(tmp, official, str(source))
        except CnnbenchError:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, target)
    return target


def download_dataset(dataset: str, dest: Path | None = None, from_path: Path | None = None,
                     mirror: str | None = None, timeout: float = 15.0, progress: bool = True) -> list[tuple[Path, str]]:
    """Fetch (or import) the official files of ``dataset``; returns (path, what happened) per file."""
    specs = official_files()
    if dataset not in specs:
        raise CnnbenchError(f"unknown dataset {dataset!r}; expected one of {', '.join(specs)}")
    spec = specs[dataset]
    folder = (Path(dest) if dest is not None else downloads_dir()) / spec.folder
    make_folder(folder, "the download folder", "; expected a writable folder (--dest DIR)")
    if from_path is not None:
        return _import_all(spec, Path(from_path), folder)
    done = []
    for official in spec.files:
        target = folder / official.name
        if target.exists() and target.stat().st_size == official.size and md5_of(target) == official.md5:
            done.append((target, "already present, checksum ok"))
            continue
        done.append((download_file(spec, official, folder, mirror, timeout, progress), "downloaded, checksum ok"))
    return done


def _import_all(spec: DownloadSpec, source: Path, folder: Path) -> list[tuple[Path, str]]:
    if not source.exists():
        raise CnnbenchError(f"{source}: no such file or folder")
    names = {f.name for f in spec.files}
    if source.is_dir():
        picked = [source / n for n in sorted(names) if (source / n).exists()]
        if not picked:
            raise CnnbenchError(f"{source}: none of the official {spec.dataset} files ({', '.join(sorted(names))}) is there")
    else:
        picked = [source]
    return [(import_file(spec, p, folder),
             "imported, checksum ok" if p.name in names else "imported (not the official file name: checksum not checked)")
            for p in picked]
