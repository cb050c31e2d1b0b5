"""Integration: the real files in ../shared/datasets (skipped when absent)."""

from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np
import pytest

from cnnbench.data import BatchLoader, BatchPipeline, load_dataset

pytestmark = pytest.mark.realdata


@pytest.fixture
def tiny(real_data):
    # the test session shares one CNNBENCH_HOME (tests/conftest.py): the cache built by the
    # first test is reused by the others in ~10 ms
    return load_dataset("tiny-imagenet", data=real_data)


def test_tiny_imagenet_classes_in_wnids_order(tiny, real_data):
    with zipfile.ZipFile(real_data / "tiny-imagenet-200-train80.zip") as z:
        wnids = z.read("tiny-imagenet-200/wnids.txt").decode().split()
    assert [c.id for c in tiny.classes] == wnids and len(wnids) == 200
    goldfish = next(c for c in tiny.classes if c.id == "n01443537")
    assert goldfish.name == "goldfish" and "Carassius auratus" in goldfish.synonyms


def test_tiny_imagenet_counts_and_grayscale_share(tiny):
    train, val = tiny.split("train"), tiny.split("val")
    assert tiny.split_names == ["train", "val"]
    assert train.images.shape == (16000, 64, 64, 3) and len(val) == 10000
    assert set(Counter(train.labels.tolist()).values()) == {80}
    assert set(Counter(val.labels.tolist()).values()) == {50} and (val.labels >= 0).all()
    share = (tiny.grayscale_count["train"] + tiny.grayscale_count["val"]) / 26000
    assert 0.015 < share < 0.025  # "about 2% are grayscale"
    assert 0.3 < tiny.stats["channel_mean"].mean() < 0.6


def test_tiny_imagenet_half_split_is_25_plus_25(tiny, real_data):
    ds = load_dataset("tiny-imagenet", data=real_data, val_split="half")
    assert set(Counter(ds.split("val").labels.tolist()).values()) == {25}
    assert set(Counter(ds.split("test").labels.tolist()).values()) == {25}


def test_tiny_imagenet_batches(tiny):
    loader = BatchLoader(tiny.split("train"), batch_size=256, seed=0)
    images, labels = next(iter(loader))
    x = BatchPipeline(normalize="standardize", stats=tiny.stats, input_size=224)(images)
    assert x.shape == (256, 3, 224, 224) and abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3
    assert len(loader) == 62


def test_mnist_60000_plus_10000_digits(real_data):
    ds = load_dataset("mnist", data=real_data, grayscale="gray")
    train, test = ds.split("train"), ds.split("test")
    assert train.images.shape == (60000, 28, 28, 1) and len(test) == 10000
    assert sorted(np.unique(train.labels)) == list(range(10)) and sorted(np.unique(test.labels)) == list(range(10))
    assert Counter(train.labels.tolist())[1] == 6742  # the published class count for digit 1
    assert ds.stats["channel_mean"][0] == pytest.approx(0.1307, abs=1e-4)
    assert ds.stats["channel_std"][0] == pytest.approx(0.3081, abs=1e-4)
