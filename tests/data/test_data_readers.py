"""Readers on fixtures in the official formats: classes, labels, boxes, pixels."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbench.data import load_dataset
from data_formats import (CIFAR_NAMES, WNIDS, TinySpec, cifar_batches, colour, gray_level, jpeg, mnist_arrays,
                          write_cifar_folder, write_mnist, write_tiny_folder)


def test_tiny_imagenet_zip_classes_follow_wnids_and_words(tiny_zip):
    ds = load_dataset("tiny-imagenet", data=tiny_zip)
    assert [c.id for c in ds.classes] == WNIDS  # file order, not sorted
    assert [c.name for c in ds.classes] == ["Egyptian cat", "goldfish", "test tube"]
    assert ds.classes[1].synonyms == ["goldfish", "Carassius auratus"]
    assert (ds.num_classes, ds.channels, ds.image_size) == (3, 3, (64, 64))
    assert ds.split_names == ["train", "val", "test"]


def test_tiny_imagenet_train_order_labels_boxes_and_pixels(tiny_zip):
    train = load_dataset("tiny-imagenet", data=tiny_zip).split("train")
    spec = TinySpec()
    assert train.images.shape == (3 * spec.train_per_class, 64, 64, 3) and train.images.dtype == np.uint8
    assert isinstance(train.images, np.memmap)
    np.testing.assert_array_equal(train.labels, np.repeat([0, 1, 2], spec.train_per_class))
    # numeric order within a class: _2 before _10
    assert train.files[:3] == [f"train/{WNIDS[0]}/images/{WNIDS[0]}_{i}.JPEG" for i in range(3)]
    assert train.files[10] == f"train/{WNIDS[0]}/images/{WNIDS[0]}_10.JPEG"
    np.testing.assert_array_equal(train.boxes[5], [5, 6, 35, 45])
    for row in (0, 14, 35):
        label, index = divmod(row, spec.train_per_class)
        expected = [gray_level(label, index)] * 3 if index == spec.gray_index else colour(label, index)
        np.testing.assert_allclose(train.images[row].reshape(-1, 3).mean(0), expected, atol=2.5)


def test_tiny_imagenet_val_annotations_and_unlabelled_test(tiny_zip):
    ds = load_dataset("tiny-imagenet", data=tiny_zip)
    val, test = ds.split("val"), ds.split("test")
    assert len(val) == 12 and val.files[0] == "val/images/val_0.JPEG"
    np.testing.assert_array_equal(val.labels, np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(val.boxes[5], [1, 1, 51, 60])
    np.testing.assert_allclose(val.images[6].reshape(-1, 3).mean(0), colour(1, 2), atol=2.5)
    assert len(test) == 3 and (test.labels == -1).all()
    assert ds.grayscale_count == {"train": 3, "val": 0, "test": 0}


def test_tiny_imagenet_folder_reads_like_the_zip(tiny_zip, tmp_path):
    root = write_tiny_folder(tmp_path)
    from_zip = load_dataset("tiny-imagenet", data=tiny_zip)
    for data in (root, tmp_path):  # the extracted folder itself, or the folder holding it
        from_folder = load_dataset("tiny-imagenet", data=data)
        assert from_folder.cache_dir != from_zip.cache_dir
        np.testing.assert_array_equal(from_folder.split("train").images, from_zip.split("train").images)
        assert from_folder.split("val").files == from_zip.split("val").files


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_gz_or_raw(tmp_path, gz):
    folder = write_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", data=folder, grayscale="gray")
    arrays = mnist_arrays()
    assert ds.channels == 1 and ds.image_size == (28, 28)
    assert ds.split_names == ["train", "val", "test"]
    np.testing.assert_array_equal(ds.split("train").images[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(ds.split("test").labels, arrays["t10k"][1])
    assert ds.split("val").images is ds.split("test").images  # no holdout: val is the official test split
    assert [c.id for c in ds.classes] == [str(d) for d in range(10)]


def test_mnist_replicate_gives_three_equal_channels(mnist_dir):
    train = load_dataset("mnist", data=mnist_dir).split("train")
    assert train.images.shape == (40, 28, 28, 3)
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], train.labels)


def test_cifar10_targz_and_folder(cifar_targz, tmp_path):
    batches = cifar_batches()
    for data in (cifar_targz, write_cifar_folder(tmp_path)):
        ds = load_dataset("cifar10", data=data)
        assert [c.name for c in ds.classes] == [n.decode() for n in CIFAR_NAMES]
        train = ds.split("train")
        assert train.images.shape == (30, 32, 32, 3)
        first = batches["data_batch_1"][b"data"][0]
        np.testing.assert_array_equal(train.images[0, :, :, 0], first[:1024].reshape(32, 32))  # red plane
        np.testing.assert_array_equal(train.images[0, :, :, 2], first[2048:].reshape(32, 32))  # blue plane
        assert train.labels.tolist()[:6] == batches["data_batch_1"][b"labels"]
        assert ds.split("test").files[0] == "test_batch_0.png"
        assert ds.grayscale_count == {"train": 0, "test": 0}


def test_tiny_imagenet_ignores_files_that_are_not_jpegs_in_every_split(tmp_path):
    """Finder/Explorer leave .DS_Store / Thumbs.db in extracted folders; train and val skipped
    them, the unlabelled test split tried to decode them and the whole prepare failed."""
    junk = {"test/images/.DS_Store": b"\0\0\0\1Bud1", "val/images/Thumbs.db": b"\xd0\xcf",
            f"train/{WNIDS[0]}/images/.DS_Store": b"\0\0\0\1Bud1"}
    root = write_tiny_folder(tmp_path, TinySpec(replace=junk))
    ds = load_dataset("tiny-imagenet", data=root)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [36, 12, 3]
    assert ds.split("test").files == [f"test/images/test_{t}.JPEG" for t in range(3)]
    assert ds.manifest["splits"]["test"]["skipped"] == 0


def test_tiny_imagenet_folder_with_symlinked_subfolders(tmp_path, fresh_home):
    """Big folders are often symlinked from another disk: the files behind a linked train/ are
    read, and fingerprinted, so editing one of them rebuilds the cache."""
    root = write_tiny_folder(tmp_path / "data")
    (tmp_path / "disk").mkdir()
    (root / "train").rename(tmp_path / "disk" / "train")
    (root / "train").symlink_to(tmp_path / "disk" / "train", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a cycle must not hang the walk
    ds = load_dataset("tiny-imagenet", data=root)
    assert len(ds.split("train")) == 36 and ds.split("train").files[0] == f"train/{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG"
    image = tmp_path / "disk" / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG"
    image.write_bytes(jpeg((7, 7, 7)))
    again = load_dataset("tiny-imagenet", data=root)
    assert again.cache_dir != ds.cache_dir and abs(float(again.split("train").images[0].mean()) - 7) < 2
