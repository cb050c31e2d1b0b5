"""Every kind of bad input: a one-line error naming the file, exit code 2, and no partial cache."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest

from cnnbench.cli import main
from cnnbench.data import load_dataset
from cnnbench.data.sources import open_tree
from cnnbench.errors import CnnbenchError
from data_formats import (CIFAR_NAMES, TinySpec, cifar_batches, jpeg, write_cifar_folder, write_mnist, write_tiny_folder,
                          write_tiny_zip)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnbench: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def no_cache_left(home: Path) -> bool:
    cache = home / "cache"
    return not cache.exists() or not any(cache.iterdir())


def prepare(capsys, source: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "data", "prepare", "tiny-imagenet", "--data", str(source), *extra)


def test_missing_zip(capsys, tmp_path, fresh_home):
    code, _out, err = prepare(capsys, tmp_path / "tiny-imagenet-200.zip")
    assert_one_line_error(code, err, "tiny-imagenet-200.zip: no such file or folder")


def test_truncated_zip(capsys, tmp_path, tiny_zip, fresh_home):
    truncated = tmp_path / "tiny-imagenet-200.zip"
    truncated.write_bytes(tiny_zip.read_bytes()[: tiny_zip.stat().st_size // 2])
    code, _out, err = prepare(capsys, truncated)
    assert_one_line_error(code, err, str(truncated), "not a readable zip archive")
    assert no_cache_left(fresh_home)


def test_folder_not_in_official_layout_names_the_missing_file(capsys, tmp_path, fresh_home):
    root = write_tiny_folder(tmp_path, TinySpec(skip_words=True))
    code, _out, err = prepare(capsys, root)
    assert_one_line_error(code, err, "missing words.txt", "not the official tiny-imagenet layout")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _out, err = prepare(capsys, empty)
    assert_one_line_error(code, err, "missing wnids.txt")
    assert no_cache_left(fresh_home)


def test_corrupt_jpeg_is_named_and_skip_bad_counts_it(capsys, tmp_path, fresh_home):
    bad = "train/n01443537/images/n01443537_3.JPEG"
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", TinySpec(replace={bad: b"\xff\xd8 not a jpeg"}))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, f"tiny-imagenet-200/{bad}", "not a decodable JPEG", "--skip-bad")
    assert no_cache_left(fresh_home)
    code, out, _err = prepare(capsys, source, "--skip-bad")
    assert code == 0 and "skipped bad 1" in out
    ds = load_dataset("tiny-imagenet", data=source, skip_bad=True)
    assert len(ds.split("train")) == 35 and ds.manifest["splits"]["train"]["skipped"] == 1
    assert bad not in ds.split("train").files


def test_empty_jpeg_file_is_named_and_skip_bad_counts_it(capsys, tmp_path, fresh_home):
    """A 0-byte image (an extraction or copy cut short) is a bad image, not a ValueError traceback."""
    bad = "train/n01443537/images/n01443537_3.JPEG"
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", TinySpec(replace={bad: b""}))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, f"tiny-imagenet-200/{bad}: empty file, expected a JPEG", "--skip-bad")
    assert no_cache_left(fresh_home)
    code, out, _err = prepare(capsys, source, "--skip-bad")
    assert code == 0 and "skipped bad 1" in out
    ds = load_dataset("tiny-imagenet", data=source, skip_bad=True)
    assert len(ds.split("train")) == 35 and bad not in ds.split("train").files
    assert ds.split("train").files[14:16] == ["train/n01443537/images/n01443537_2.JPEG",
                                              "train/n01443537/images/n01443537_4.JPEG"]


def test_annotation_with_unknown_class(capsys, tmp_path, fresh_home):
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip",
                            TinySpec(extra_annotation="val_99.JPEG\tn00000000\t0\t0\t10\t10\n"))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, "val/val_annotations.txt line 13", "'n00000000'", "not in wnids.txt")
    assert no_cache_left(fresh_home)


def test_annotation_listing_a_val_image_twice(capsys, tmp_path, fresh_home):
    """val_0 is class 0 (n02124075) on line 1; a second line naming another class must not relabel it."""
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip",
                            TinySpec(extra_annotation="val_0.JPEG\tn01443537\t0\t0\t10\t10\n"))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, "val/val_annotations.txt line 13", "val_0.JPEG is listed twice (line 1 and 13)",
                          "expected one line per val image")
    assert no_cache_left(fresh_home)


def test_image_of_the_wrong_size(capsys, tmp_path, fresh_home):
    odd = "val/images/val_2.JPEG"
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", TinySpec(replace={odd: jpeg((1, 2, 3), (32, 48))}))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, odd, "image is 48x32, expected 64x64")
    assert no_cache_left(fresh_home)


def test_zip_slip_entry_is_never_written(capsys, tmp_path, fresh_home):
    evil = "tiny-imagenet-200/../../evil.txt"
    source = write_tiny_zip(tmp_path / "data" / "tiny-imagenet-200.zip", TinySpec(extra_members={evil: b"owned"}))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, repr(evil), "would escape the target folder")
    with pytest.raises(Exception, match="would escape"):
        open_tree(source)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert no_cache_left(fresh_home)


def test_unknown_dataset_and_no_location(capsys, monkeypatch, fresh_home):
    monkeypatch.delenv("CNNBENCH_DATA", raising=False)
    code, _out, err = run_cli(capsys, "data", "info", "mnist")
    assert_one_line_error(code, err, "no mnist data found", "--data PATH", "cnnbench data download mnist")


def corrupt_deflate_stream(data: bytearray, start: int) -> None:
    """Make the deflate block at ``start`` declare the reserved block type 3 (zlib: 'invalid block type')."""
    data[start] = 0b111  # BFINAL=1, BTYPE=11


def test_corrupt_compressed_data_is_named(capsys, tmp_path, fresh_home, monkeypatch):
    """A damaged deflate stream inside the zip (as the official, deflated archive has) or an MNIST .gz."""
    member = "tiny-imagenet-200/val/val_annotations.txt"
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", compression=zipfile.ZIP_DEFLATED)
    info = zipfile.ZipFile(source).getinfo(member)
    data = bytearray(source.read_bytes())
    corrupt_deflate_stream(data, info.header_offset + 30 + len(info.filename.encode()) + len(info.extra))
    source.write_bytes(bytes(data))
    code, _out, err = prepare(capsys, source)
    assert_one_line_error(code, err, f"{source}:{member}", "truncated or corrupt")
    assert no_cache_left(fresh_home)

    folder = write_mnist(tmp_path / "mnist")
    gz = folder / "train-labels-idx1-ubyte.gz"
    data = bytearray(gz.read_bytes())
    corrupt_deflate_stream(data, 10)  # right after gzip's 10-byte header
    gz.write_bytes(bytes(data))
    code, _out, err = run_cli(capsys, "data", "prepare", "mnist", "--data", str(folder))
    assert_one_line_error(code, err, str(gz), "not a complete gzip file")
    assert no_cache_left(fresh_home)


def test_mnist_file_cut_inside_its_header_says_truncated(capsys, tmp_path, fresh_home):
    """The magic number is right, the dimension sizes are cut off: 'truncated', not 'magic 2049, expected 2049'."""
    folder = write_mnist(tmp_path / "mnist", gz=False)
    short = folder / "train-labels-idx1-ubyte"
    short.write_bytes(short.read_bytes()[:6])
    code, _out, err = run_cli(capsys, "data", "prepare", "mnist", "--data", str(folder))
    assert_one_line_error(code, err, f"{short}: truncated: 6 bytes, shorter than the 8-byte idx header")
    assert no_cache_left(fresh_home)


def open_handles(path: Path) -> int:
    """How many of this process's file descriptors point at ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")
def test_a_refused_archive_is_closed_at_once(tmp_path, tiny_zip, cifar_targz, fresh_home):
    """The error (and the traceback an interactive session keeps) must not hold the archive open."""
    evil_zip = write_tiny_zip(tmp_path / "evil.zip", TinySpec(extra_members={"../evil.txt": b"x"}))
    evil_tar = tmp_path / "evil.tar.gz"
    with tarfile.open(evil_tar, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("../evil.txt"), io.BytesIO(b""))
    truncated_tar = tmp_path / "cifar-10-python.tar.gz"
    truncated_tar.write_bytes(cifar_targz.read_bytes()[:5000])
    for archive, call in [(evil_zip, lambda: open_tree(evil_zip)), (evil_tar, lambda: open_tree(evil_tar)),
                          (truncated_tar, lambda: open_tree(truncated_tar)),
                          (tiny_zip, lambda: load_dataset("mnist", data=tiny_zip))]:  # no MNIST files in it
        before = open_handles(archive)
        with pytest.raises(CnnbenchError) as exc:
            call()
        assert exc.value.__traceback__ is not None and open_handles(archive) == before, (archive, str(exc.value))


@pytest.mark.parametrize("label", [-1, 10])
def test_cifar_label_outside_the_classes_is_named(capsys, tmp_path, fresh_home, label):
    root = write_cifar_folder(tmp_path)
    batch = cifar_batches()["data_batch_2"]
    batch[b"labels"][3] = label
    (root / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    code, _out, err = run_cli(capsys, "data", "prepare", "cifar10", "--data", str(root))
    assert_one_line_error(code, err, f"{root / 'data_batch_2'}: label {label} is not one of the 10 classes")
    assert no_cache_left(fresh_home)


def test_cifar_filenames_not_matching_the_images_are_named(capsys, tmp_path, fresh_home):
    root = write_cifar_folder(tmp_path)
    batch = cifar_batches()["test_batch"]
    batch[b"filenames"] = batch[b"filenames"][:-1]
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    code, _out, err = run_cli(capsys, "data", "prepare", "cifar10", "--data", str(root))
    assert_one_line_error(code, err, f"{root / 'test_batch'}: 6 images but 5 filenames")
    assert no_cache_left(fresh_home)


def _without_labels(batch: dict) -> dict:
    del batch[b"labels"]
    return batch


@pytest.mark.parametrize("member, content, expected", [
    ("data_batch_2", lambda batch: [1, 2, 3], "not a CIFAR-10 python batch (a pickled list, expected a dict)"),
    ("data_batch_2", _without_labels, "labels must be a list of class numbers 0-9"),
    ("data_batch_2", lambda batch: batch | {b"labels": [b"cat"] * 6}, "labels must be a list of class numbers 0-9"),
    ("batches.meta", lambda batch: "airplane", "not a CIFAR-10 python batch (a pickled str, expected a dict)"),
    ("batches.meta", lambda batch: {b"label_names": [n.decode() for n in CIFAR_NAMES]}, "expected 10 label_names"),
])
def test_cifar_pickle_of_the_wrong_shape_is_named(capsys, tmp_path, fresh_home, member, content, expected):
    """A pickle that loads but is not the official dict of bytes and lists: one line, not an AttributeError."""
    root = write_cifar_folder(tmp_path)
    batch = cifar_batches()["data_batch_2"] if member != "batches.meta" else {}
    (root / member).write_bytes(pickle.dumps(content(batch), protocol=2))
    code, _out, err = run_cli(capsys, "data", "prepare", "cifar10", "--data", str(root))
    assert_one_line_error(code, err, f"{root / member}: {expected}")
    assert no_cache_left(fresh_home)


def test_cnnbench_home_that_is_a_file(capsys, tmp_path, tiny_zip, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("CNNBENCH_HOME", str(home))
    code, _out, err = prepare(capsys, tiny_zip)
    assert_one_line_error(code, err, f"{home}: cannot create")
    assert home.read_text() == "not a folder"
