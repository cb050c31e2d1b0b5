"""Downloads against loopback only: offline failure, Range resume, checksums, --from import."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cnnbench.cli import main
from cnnbench.data import download as download_module
from cnnbench.data.download import DownloadSpec, OfficialFile, download_dataset, official_files
from cnnbench.errors import CnnbenchError

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


class RangeHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring 'Range: bytes=N-'; records the ranges asked for."""

    ranges: list[str | None] = []

    def do_GET(self):
        asked = self.headers.get("Range")
        type(self).ranges.append(asked)
        start = int(asked.split("=")[1].rstrip("-")) if asked else 0
        body = PAYLOAD[start:]
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.ranges = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def payload_spec(monkeypatch):
    """Pretend the official tiny-imagenet file is PAYLOAD (so its checksum can be checked offline)."""
    official = OfficialFile("tiny-imagenet-200.zip", hashlib.md5(PAYLOAD).hexdigest(), len(PAYLOAD),
                            ("http://127.0.0.1:9/tiny-imagenet-200.zip",))
    specs = {"tiny-imagenet": DownloadSpec("tiny-imagenet", "", (official,))}
    monkeypatch.setattr(download_module, "official_files", lambda: specs)
    return official


def test_table_holds_the_official_urls_and_checksums():
    specs = official_files()
    assert specs["tiny-imagenet"].files[0].urls[0] == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert specs["tiny-imagenet"].files[0].md5 == "90528d7ca1a48142e341f4ef8d21d0de"
    assert specs["cifar10"].files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert {f.name: f.md5 for f in specs["mnist"].files}["train-labels-idx1-ubyte.gz"] == "d53e105ee54ea40749a09fcbcd1e9432"
    assert specs["mnist"].folder == "mnist" and len(specs["mnist"].files) == 4


def test_offline_fails_fast_and_says_where_to_put_the_file(capsys, tmp_path):
    code = main(["data", "download", "cifar10", "--dest", str(tmp_path), "--mirror", "http://127.0.0.1:9/", "--timeout", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "Connection refused" in err and f"put it at {tmp_path / 'cifar-10-python.tar.gz'}" in err
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    assert list(tmp_path.iterdir()) == []


def test_download_resumes_a_partial_file_with_range(server, payload_spec, tmp_path):
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(PAYLOAD[:300_000])
    [(path, what)] = download_dataset("tiny-imagenet", dest=tmp_path, mirror=server, progress=False)
    assert path.read_bytes() == PAYLOAD and what == "downloaded, checksum ok"
    assert RangeHandler.ranges == ["bytes=300000-"]
    assert not (tmp_path / "tiny-imagenet-200.zip.part").exists()
    [(_path, what)] = download_dataset("tiny-imagenet", dest=tmp_path, mirror=server, progress=False)
    assert what == "already present, checksum ok" and len(RangeHandler.ranges) == 1


def test_checksum_mismatch_keeps_nothing(server, payload_spec, monkeypatch, tmp_path):
    monkeypatch.setattr(download_module, "official_files", lambda: {"tiny-imagenet": DownloadSpec(
        "tiny-imagenet", "", (OfficialFile("tiny-imagenet-200.zip", "0" * 32, len(PAYLOAD), ()),))})
    with pytest.raises(CnnbenchError, match="checksum mismatch for tiny-imagenet-200.zip: md5 [0-9a-f]{32}, expected 0{32}"):
        download_dataset("tiny-imagenet", dest=tmp_path, mirror=server, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_from_file_checks_official_names_only(payload_spec, tmp_path):
    good = tmp_path / "src" / "tiny-imagenet-200.zip"
    good.parent.mkdir()
    good.write_bytes(PAYLOAD)
    [(path, what)] = download_dataset("tiny-imagenet", dest=tmp_path / "dl", from_path=good)
    assert path == tmp_path / "dl" / "tiny-imagenet-200.zip" and what == "imported, checksum ok"
    good.write_bytes(PAYLOAD[:-1])
    with pytest.raises(CnnbenchError, match="checksum mismatch"):
        download_dataset("tiny-imagenet", dest=tmp_path / "dl2", from_path=good)
    assert list((tmp_path / "dl2").iterdir()) == []
    other = tmp_path / "src" / "tiny-imagenet-200-train80.zip"
    other.write_bytes(b"a reduced copy")
    [(path, what)] = download_dataset("tiny-imagenet", dest=tmp_path / "dl3", from_path=other)
    assert path.read_bytes() == b"a reduced copy" and "checksum not checked" in what


def test_from_folder_verifies_the_official_mnist_files(tmp_path, mnist_dir, real_data):
    results = download_dataset("mnist", dest=tmp_path, from_path=real_data / "mnist")
    assert [(p.name, what) for p, what in results] == [
        (name, "imported, checksum ok") for name in sorted(f.name for f in official_files()["mnist"].files)]
    assert all(p.parent == tmp_path / "mnist" for p, _ in results)
    # the fixture's files carry the official names but not the official bytes
    with pytest.raises(CnnbenchError, match="checksum mismatch for t10k-images-idx3-ubyte.gz"):
        download_dataset("mnist", dest=tmp_path / "other", from_path=mnist_dir)


def test_dest_that_is_not_a_folder_is_a_one_line_error(capsys, tmp_path, mnist_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["data", "download", "mnist", "--dest", str(blocker), "--from", str(mnist_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cnnbench: error: {blocker / 'mnist'}: cannot create the download folder (Not a directory); "
                   "expected a writable folder (--dest DIR)"]
    assert blocker.read_text() == "x"
