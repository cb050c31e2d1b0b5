"""Split views: per-class subsets, the saved stratified half split, train holdout."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cnnbench.data import load_dataset
from cnnbench.data.splits import split_file_path, stratified_halves
from cnnbench.errors import CnnbenchError
from data_formats import TinySpec, jpeg, write_tiny_zip


def test_train_per_class_keeps_the_first_n_of_each_class(tiny_zip):
    train = load_dataset("tiny-imagenet", data=tiny_zip, train_per_class=3).split("train")
    assert Counter(train.labels.tolist()) == {0: 3, 1: 3, 2: 3}
    assert [f.rsplit("_", 1)[1] for f in train.files[:3]] == ["0.JPEG", "1.JPEG", "2.JPEG"]


def test_half_split_is_stratified_seeded_saved_and_reused(tmp_path, fresh_home):
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", TinySpec(val_per_class=6))
    ds = load_dataset("tiny-imagenet", data=source, val_split="half")
    val, test = ds.split("val"), ds.split("test")
    assert ds.split_names == ["train", "val", "test", "unlabelled"]
    assert Counter(val.labels.tolist()) == {0: 3, 1: 3, 2: 3} and Counter(test.labels.tolist()) == {0: 3, 1: 3, 2: 3}
    assert not set(val.files) & set(test.files) and len(set(val.files) | set(test.files)) == 18
    fingerprint = ds.manifest["source"]["fingerprint"]
    saved = json.loads(split_file_path("tiny-imagenet", fingerprint, "val", 0).read_text())
    assert sorted(saved["val"]) == sorted(val.files) and saved["seed"] == 0
    # reused: a split file edited by hand (a legal permutation) is what later runs get
    saved["val"][0], saved["test"][0] = saved["test"][0], saved["val"][0]
    split_file_path("tiny-imagenet", fingerprint, "val", 0).write_text(json.dumps(saved))
    again = load_dataset("tiny-imagenet", data=source, val_split="half")
    assert sorted(again.split("val").files) == sorted(saved["val"])
    other = load_dataset("tiny-imagenet", data=source, val_split="half", split_seed=1)
    assert sorted(other.split("val").files) != sorted(val.files)


def test_half_split_ignores_the_grayscale_policy(tmp_path, fresh_home):
    spec = TinySpec(val_per_class=4, replace={"val/images/val_0.JPEG": jpeg((77,))})
    source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", spec)
    kept = load_dataset("tiny-imagenet", data=source, val_split="half")
    dropped = load_dataset("tiny-imagenet", data=source, val_split="half", grayscale="drop")
    both = set(dropped.split("val").files) | set(dropped.split("test").files)
    assert "val/images/val_0.JPEG" not in both and len(both) == 11
    assert set(dropped.split("val").files) <= set(kept.split("val").files)


def test_stratified_halves_does_not_depend_on_input_order():
    files = [f"f{i:02d}" for i in range(40)]
    labels = np.arange(40) % 4
    a = stratified_halves(files, labels, seed=5)
    b = stratified_halves(files[::-1], labels[::-1], seed=5)
    assert a == b and len(a[0]) == 20


def test_holdout_carves_val_from_train(mnist_dir):
    ds = load_dataset("mnist", data=mnist_dir, holdout=0.25)
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    assert (len(train), len(val), len(test)) == (30, 10, 20)
    assert Counter(val.labels.tolist()) == {d: 1 for d in range(10)}
    assert not set(train.files) & set(val.files)


def test_holdout_and_half_together_are_refused(mnist_dir):
    with pytest.raises(CnnbenchError, match="choose one"):
        load_dataset("mnist", data=mnist_dir, holdout=0.1, val_split="half")


def test_holdout_that_would_take_a_whole_class_is_refused(mnist_dir):
    """One image per class and holdout 0.6: round(0.6) = 1 held out of 1, so train would lose
    every class (and statistics of an empty split failed with a bare ValueError)."""
    with pytest.raises(CnnbenchError, match=r"holdout 0.6: would hold out all 1 training image\(s\) of class 0"):
        load_dataset("mnist", data=mnist_dir, train_per_class=1, holdout=0.6)
    assert len(load_dataset("mnist", data=mnist_dir, train_per_class=2, holdout=0.6).split("train")) == 10


def test_holdout_that_would_hold_out_nothing_is_refused(mnist_dir):
    """One image per class and holdout 0.4: round(0.4) = 0 in every class, so val was empty and a
    run trained on it reported val top-1 0% and val loss 0 as if it had evaluated."""
    with pytest.raises(CnnbenchError, match=r"holdout 0.4: holds out no image at all .* val would be empty"):
        load_dataset("mnist", data=mnist_dir, train_per_class=1, holdout=0.4)
    assert len(load_dataset("mnist", data=mnist_dir, train_per_class=3, holdout=0.4).split("val")) == 10



@pytest.mark.parametrize("seed", [-1, 1.5])
def test_split_seed_must_be_a_non_negative_integer(mnist_dir, seed):
    with pytest.raises(CnnbenchError, match=rf"split_seed: expected a non-negative integer, got {seed}"):
        load_dataset("mnist", data=mnist_dir, val_split="half", split_seed=seed)


def test_half_split_keeps_images_whose_cifar_file_names_repeat(tmp_path, fresh_home):
    # CIFAR batches carry their own file names; two images under one name must still land in
    # exactly one half each (the split file and the row lookup go by name).
    import pickle

    from data_formats import cifar_batches, write_cifar_folder

    root = write_cifar_folder(tmp_path)
    rng = np.random.default_rng(0)
    test = cifar_batches()["test_batch"]
    test[b"data"] = rng.integers(0, 256, size=(12, 3072), dtype=np.uint8)
    test[b"labels"] = [i % 6 for i in range(12)]
    test[b"filenames"] = [b"same.png", b"same.png"] + [f"t{i}.png".encode() for i in range(2, 12)]
    (root / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    ds = load_dataset("cifar10", data=root, val_split="half")
    val, test_half = ds.split("val"), ds.split("test")
    rows = np.concatenate([val.images, test_half.images]).reshape(len(val) + len(test_half), -1)
    assert len(val) == len(test_half) == 6 and len(np.unique(rows, axis=0)) == 12
    assert len(set(val.files) | set(test_half.files)) == 12
