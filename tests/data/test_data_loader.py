"""BatchLoader: batches, seeded order, exact mid-epoch resume, rank sharding; BatchPipeline maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnbench.data import BatchLoader, BatchPipeline, Split
from cnnbench.errors import CnnbenchError


def numbered_split(n: int = 50, size: int = 8, channels: int = 3) -> Split:
    """Image i is filled with i % 256 and labelled i, so a batch shows which images it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, channels)).copy()
    return Split("train", images, np.arange(n, dtype=np.int64), [f"img{i}" for i in range(n)])


def epoch_labels(loader: BatchLoader) -> list[int]:
    return [int(v) for _x, y in loader for v in y]


def test_batches_are_uint8_nchw_channels_last_and_match_labels():
    loader = BatchLoader(numbered_split(), batch_size=16, shuffle=True, seed=0)
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 8, 8) and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[:, 0, 0, 0].long(), y)
    assert len(loader) == 3  # 50 // 16 with drop_last


def test_order_depends_only_on_seed_and_epoch():
    a = BatchLoader(numbered_split(), batch_size=10, seed=3)
    b = BatchLoader(numbered_split(), batch_size=10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    first = epoch_labels(a)
    assert first == epoch_labels_at(b, 2) and sorted(first) == list(range(50))
    assert first != epoch_labels_at(BatchLoader(numbered_split(), batch_size=10, seed=3), 3)
    assert epoch_labels_at(BatchLoader(numbered_split(), batch_size=10, shuffle=False), 5) == list(range(50))


def epoch_labels_at(loader: BatchLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return epoch_labels(loader)


def test_state_dict_resumes_exactly_mid_epoch():
    full = BatchLoader(numbered_split(), batch_size=7, seed=1)
    full.set_epoch(4)
    expected = [y.tolist() for _x, y in full]
    interrupted = BatchLoader(numbered_split(), batch_size=7, seed=1)
    interrupted.set_epoch(4)
    seen = []
    for _x, y in interrupted:
        seen.append(y.tolist())
        if len(seen) == 3:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 4, "position": 3}
    resumed = BatchLoader(numbered_split(), batch_size=7, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a training loop calls this again on resume: the position is kept
    seen += [y.tolist() for _x, y in resumed]
    assert seen == expected
    assert resumed.state_dict() == {"epoch": 5, "position": 0}


def test_ranks_share_an_epoch_without_overlap():
    split = numbered_split(50)
    shards = [epoch_labels(BatchLoader(split, batch_size=4, seed=0, drop_last=False, rank=r, world_size=3))
              for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(50))  # every image exactly once
    dropped = [BatchLoader(split, batch_size=4, seed=0, drop_last=True, rank=r, world_size=3) for r in range(3)]
    assert [len(d) for d in dropped] == [4, 4, 4]
    labels = [epoch_labels(d) for d in dropped]
    assert all(len(l) == 16 for l in labels) and not set(labels[0]) & set(labels[1])


def test_bad_loader_arguments():
    with pytest.raises(CnnbenchError, match="rank"):
        BatchLoader(numbered_split(), batch_size=4, rank=2, world_size=2)
    loader = BatchLoader(numbered_split(), batch_size=10)
    with pytest.raises(CnnbenchError, match="position 9"):
        loader.load_state_dict({"epoch": 0, "position": 9})


STATS = {"channel_mean": np.array([0.2, 0.4, 0.6], np.float32), "channel_std": np.array([0.5, 0.25, 0.1], np.float32),
         "pixel_mean": np.linspace(0, 1, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)}


def batch() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("normalize, expected", [
    ("none", lambda x: x),
    ("channel_mean", lambda x: x - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)),
    ("pixel_mean", lambda x: x - torch.from_numpy(STATS["pixel_mean"]).permute(2, 0, 1)[None]),
    ("standardize", lambda x: (x - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 0.1]).view(1, 3, 1, 1)),
    ("imagenet", lambda x: (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)),
])
def test_pipeline_normalisations(normalize, expected):
    images = batch()
    out = BatchPipeline(normalize=normalize, stats=STATS)(images)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected(images.float() / 255), rtol=1e-5, atol=1e-5)


def test_pipeline_resizes_with_antialias_when_shrinking():
    images = batch()
    small = BatchPipeline(normalize="none", input_size=4)(images)
    torch.testing.assert_close(small, F.interpolate(images.float() / 255, size=(4, 4), mode="bilinear", antialias=True))
    large = BatchPipeline(normalize="pixel_mean", stats=STATS, input_size=28)(images)
    assert large.shape == (4, 3, 28, 28)
    # linear ops commute: resizing then subtracting the resized pixel mean == resizing the difference
    diff = images.float() / 255 - torch.from_numpy(STATS["pixel_mean"]).permute(2, 0, 1)[None]
    torch.testing.assert_close(large, F.interpolate(diff, size=(28, 28), mode="bilinear"), rtol=1e-4, atol=1e-5)


def test_pipeline_runs_augment_on_unit_range_before_resize():
    seen = {}

    def augment(x, generator):
        seen["range"] = (float(x.min()), float(x.max()))
        seen["shape"] = tuple(x.shape)
        seen["generator"] = generator
        return x.flip(-1)

    g = torch.Generator().manual_seed(0)
    out = BatchPipeline(normalize="none", input_size=16, augment=augment)(batch(), g)
    assert seen["shape"] == (4, 3, 8, 8) and 0 <= seen["range"][0] <= seen["range"][1] <= 1 and seen["generator"] is g
    assert out.shape == (4, 3, 16, 16)


def test_pipeline_refuses_mismatched_statistics():
    with pytest.raises(CnnbenchError, match="imagenet"):
        BatchPipeline(normalize="imagenet")(batch()[:, :1])
    with pytest.raises(CnnbenchError, match="needs the training statistics"):
        BatchPipeline(normalize="standardize")
    with pytest.raises(CnnbenchError, match="normalize"):
        BatchPipeline(normalize="zscore", stats=STATS)


def test_pipeline_layouts_agree():
    images = batch()
    last = BatchPipeline(normalize="standardize", stats=STATS)(images)
    first = BatchPipeline(normalize="standardize", stats=STATS, channels_last=False)(images)
    assert first.is_contiguous() and not first.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(first, last)
