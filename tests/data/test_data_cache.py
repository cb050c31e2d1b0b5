"""The decoded cache: manifest, reuse, rebuild, atomicity, grayscale policies, statistics."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnbench.data import cache as cache_module
from cnnbench.data import load_dataset, prepare_dataset
from cnnbench.data.stats import compute_stats
from cnnbench.errors import CnnbenchError
from data_formats import TinySpec, write_tiny_zip


def test_manifest_records_source_options_counts(tiny_zip, fresh_home):
    prepared = prepare_dataset("tiny-imagenet", tiny_zip)
    m = prepared.manifest
    assert prepared.built and prepared.folder.parent == fresh_home / "cache"
    assert m["dataset"] == "tiny-imagenet" and m["reader_version"] == 1
    assert m["options"] == {"grayscale": "replicate", "skip_bad": False}
    assert m["source"]["path"] == str(tiny_zip) and len(m["source"]["fingerprint"]) == 64
    assert {s: c["count"] for s, c in m["splits"].items()} == {"train": 36, "val": 12, "test": 3}
    assert m["splits"]["train"]["grayscale"] == 3
    images = np.load(prepared.folder / "train_images.npy", mmap_mode="r")
    assert images.shape == (36, 64, 64, 3)
    assert images.nbytes < m["bytes"] < images.nbytes + 2**20


def test_reused_without_decoding_or_rehashing(tiny_zip, fresh_home, monkeypatch):
    first = prepare_dataset("tiny-imagenet", tiny_zip)
    hashed = []
    monkeypatch.setattr(cache_module, "_hash_file", lambda p: hashed.append(p) or "x")
    monkeypatch.setattr(cache_module, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    second = prepare_dataset("tiny-imagenet", tiny_zip)
    assert not second.built and second.folder == first.folder and hashed == []


def test_rebuilt_when_source_or_options_change(tmp_path, fresh_home):
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip")
    first = prepare_dataset("tiny-imagenet", source)
    gray = prepare_dataset("tiny-imagenet", source, grayscale="gray")
    assert gray.built and gray.folder != first.folder and gray.manifest["channels"] == 1
    write_tiny_zip(source, TinySpec(train_per_class=5))  # same path, new content
    os.utime(source, ns=(1, 1))
    changed = prepare_dataset("tiny-imagenet", source)
    assert changed.built and changed.folder != first.folder
    assert changed.manifest["splits"]["train"]["count"] == 15


def test_force_rebuilds_in_place(tiny_zip, fresh_home):
    first = prepare_dataset("tiny-imagenet", tiny_zip)
    again = prepare_dataset("tiny-imagenet", tiny_zip, force=True)
    assert again.built and again.folder == first.folder
    assert [p.name for p in again.folder.parent.iterdir()] == [first.folder.name]


def test_force_keeps_a_cache_in_place_while_the_old_one_is_deleted(tiny_zip, fresh_home, monkeypatch):
    """Another process that loads while --force deletes the old cache (seconds for a large one)
    reuses a complete cache; it used to find no folder and decode the whole dataset again."""
    first = prepare_dataset("tiny-imagenet", tiny_zip)
    rmtree, during = shutil.rmtree, []

    def rmtree_with_a_concurrent_load(path, *args, **kwargs):
        if Path(path).name.startswith(".tmp-old-") and not during:
            during.append(prepare_dataset("tiny-imagenet", tiny_zip))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree_with_a_concurrent_load)
    again = prepare_dataset("tiny-imagenet", tiny_zip, force=True)
    assert len(during) == 1 and not during[0].built and during[0].folder == first.folder
    assert again.built and sorted(p.name for p in (fresh_home / "cache").iterdir()) == [first.folder.name]


def test_full_disk_leaves_nothing(tiny_zip, fresh_home, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "write_rows", full)
    with pytest.raises(CnnbenchError, match="disk full while writing the tiny-imagenet cache"):
        prepare_dataset("tiny-imagenet", tiny_zip)
    assert list((fresh_home / "cache").iterdir()) == []


def test_interrupted_prepare_leaves_nothing(tiny_zip, fresh_home, monkeypatch):
    calls = []

    def interrupt(f, offset, rows):
        calls.append(offset)
        if len(calls) == 2:
            raise KeyboardInterrupt
        f.seek(offset)
        f.write(rows.tobytes())

    monkeypatch.setattr(cache_module, "write_rows", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("tiny-imagenet", tiny_zip)
    assert list((fresh_home / "cache").iterdir()) == []


def test_grayscale_policies(tiny_zip):
    replicate = load_dataset("tiny-imagenet", data=tiny_zip)
    drop = load_dataset("tiny-imagenet", data=tiny_zip, grayscale="drop")
    gray = load_dataset("tiny-imagenet", data=tiny_zip, grayscale="gray")
    train = replicate.split("train")
    gray_rows = [1, 13, 25]  # image _1 of each class
    for row in gray_rows:
        np.testing.assert_array_equal(train.images[row, ..., 0], train.images[row, ..., 1])
    assert len(drop.split("train")) == 33 and drop.grayscale_count["train"] == 3
    assert drop.manifest["splits"]["train"]["dropped"] == 3
    assert not any(f.endswith("_1.JPEG") for f in drop.split("train").files)
    assert gray.channels == 1 and gray.split("train").images.shape == (36, 64, 64, 1)
    rgb = train.images[0].astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.abs(gray.split("train").images[0, ..., 0] - luma).max() <= 0.5 + 1e-3


def test_stats_are_train_only_and_stored(tiny_zip):
    ds = load_dataset("tiny-imagenet", data=tiny_zip)
    x = ds.split("train").images.astype(np.float64) / 255
    np.testing.assert_allclose(ds.stats["channel_mean"], x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["channel_std"], x.std(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(ds.stats["pixel_mean"], x.mean(axis=0), rtol=1e-5)
    assert json.loads((ds.cache_dir / "manifest.json").read_text())["stats"]["channel_mean"] == \
        pytest.approx(ds.stats["channel_mean"].tolist())
    subset = load_dataset("tiny-imagenet", data=tiny_zip, train_per_class=2)
    expected = compute_stats(subset.split("train").images)["channel_mean"]
    np.testing.assert_allclose(subset.stats["channel_mean"], expected)
    assert not np.allclose(subset.stats["channel_mean"], ds.stats["channel_mean"])
    assert subset.manifest_hash != ds.manifest_hash


def test_damaged_cache_says_how_to_rebuild(tiny_zip, fresh_home):
    prepared = prepare_dataset("tiny-imagenet", tiny_zip)
    (prepared.folder / "val_labels.npy").unlink()
    with pytest.raises(CnnbenchError, match=r"damaged cache .*`cnnbench data prepare tiny-imagenet --force`"):
        load_dataset("tiny-imagenet", data=tiny_zip)
    prepare_dataset("tiny-imagenet", tiny_zip, force=True)
    assert len(load_dataset("tiny-imagenet", data=tiny_zip).split("val")) == 12


def test_cache_folder_without_a_manifest_is_rebuilt(tiny_zip, fresh_home):
    """A folder with the cache's name but no readable manifest (deleted, or a copy cut short)
    is not a cache: prepare builds it again instead of failing on every run with ENOTEMPTY."""
    first = prepare_dataset("tiny-imagenet", tiny_zip)
    for damage in (lambda m: m.unlink(), lambda m: m.write_text('{"format": 1, "data')):
        damage(first.folder / "manifest.json")
        again = prepare_dataset("tiny-imagenet", tiny_zip)
        assert again.built and again.folder == first.folder and again.manifest["splits"] == first.manifest["splits"]
        assert sorted(p.name for p in (fresh_home / "cache").iterdir()) == [first.folder.name]
        assert len(load_dataset("tiny-imagenet", data=tiny_zip).split("val")) == 12


@pytest.mark.parametrize("name, damage", [("stats.npz", "missing"), ("classes.json", "missing"),
                                          ("excluded.json", "missing"), ("stats.npz", "garbage")])
def test_every_cache_file_missing_or_corrupt_is_a_damaged_cache(tiny_zip, fresh_home, name, damage):
    prepared = prepare_dataset("tiny-imagenet", tiny_zip)
    if damage == "missing":
        (prepared.folder / name).unlink()
    else:
        (prepared.folder / name).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CnnbenchError, match=r"damaged cache .*`cnnbench data prepare tiny-imagenet --force`") as exc:
        load_dataset("tiny-imagenet", data=tiny_zip, val_split="half")  # half: reads excluded.json too
    assert damage != "missing" or name in str(exc.value)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate") or not os.path.isdir("/proc/self/fd"),
                    reason="reserves space with posix_fallocate; counts descriptors through /proc")
def test_full_disk_at_reservation_leaves_nothing_open(tiny_zip, fresh_home, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CnnbenchError, match="disk full while writing the tiny-imagenet cache") as exc:
        prepare_dataset("tiny-imagenet", tiny_zip)
    opened_here = [fd for fd in os.listdir("/proc/self/fd") if str(fresh_home) in os.path.realpath(f"/proc/self/fd/{fd}")]
    assert exc.value.__context__ is not None and opened_here == []
    assert list((fresh_home / "cache").iterdir()) == []
