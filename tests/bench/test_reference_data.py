"""The reference data paths (b) and (c) read exactly the training images cnnbench caches."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbench.bench import reference_data
from cnnbench.errors import CnnbenchError

from .conftest import TRAIN_PER_CLASS, WNIDS


def test_extract_train_tree_per_class_and_reuse(tiny_zip, tmp_path):
    train = reference_data.extract_train_tree(tiny_zip, tmp_path, per_class=3)
    assert train == tmp_path / "tiny-imagenet-200-3" / "train"
    files, labels = reference_data.list_jpegs(train)
    assert len(files) == 3 * len(WNIDS) and labels == [c for c in range(len(WNIDS)) for _ in range(3)]
    assert sorted(p.name for p in (train / WNIDS[0] / "images").iterdir()) == [f"{WNIDS[0]}_{i}.JPEG" for i in range(3)]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-imagenet-200-3"]  # no staging folder left
    (train / "marker").write_text("kept")  # a complete tree is reused, not rebuilt
    assert reference_data.extract_train_tree(tiny_zip, tmp_path, per_class=3) == train
    assert (train / "marker").exists()
    full = reference_data.extract_train_tree(tiny_zip, tmp_path)
    assert len(reference_data.list_jpegs(full)[0]) == TRAIN_PER_CLASS * len(WNIDS)


def test_locate_archive(tiny_zip, tmp_path, monkeypatch):
    assert reference_data.locate_archive(str(tiny_zip.parent)) == tiny_zip
    assert reference_data.locate_archive(str(tiny_zip)) == tiny_zip
    monkeypatch.delenv("CNNBENCH_DATA", raising=False)
    with pytest.raises(CnnbenchError, match="Tiny ImageNet not found"):
        reference_data.locate_archive(str(tmp_path))


def test_reference_batches_match_the_files(tiny_zip, tmp_path):
    train = reference_data.extract_train_tree(tiny_zip, tmp_path, per_class=4)
    loader = reference_data.imagefolder_loader(train, batch_size=5, mean=[0.5] * 3, std=[0.25] * 3, num_workers=0)
    batches = list(loader)
    assert len(batches) == 16 // 5  # drop_last
    x, y = batches[0]
    assert x.shape == (5, 3, 64, 64) and x.dtype.is_floating_point and y.dtype.is_signed
    assert float(x.min()) >= -2.0 - 1e-6 and float(x.max()) <= 2.0 + 1e-6  # (x01 - 0.5) / 0.25
    files, _ = reference_data.list_jpegs(train)
    decoded = list(reference_data.decode_jpeg_batches(files, batch_size=8))
    assert [tuple(b.shape) for b in decoded] == [(8, 3, 64, 64)] * 2  # the grayscale image comes out as RGB
    from PIL import Image

    # one shuffled epoch holds every file once: compare per-image pixel sums with PIL's decoding
    expected = sorted(int(np.asarray(Image.open(f).convert("RGB"), dtype=np.int64).sum()) for f in files)
    got = sorted(int(img.sum()) for b in decoded for img in b.numpy().astype(np.int64))
    assert np.allclose(got, expected, rtol=1e-3)
