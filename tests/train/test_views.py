"""Augmentation-set views: every image once per view per epoch, batches interleaved in a seeded
order, and a stream restored mid-epoch continues with exactly the remaining batches."""

from __future__ import annotations

import numpy as np

from cnnbench.data import BatchLoader, Split
from cnnbench.train.views import ViewStream


def make_stream(views: int = 3) -> ViewStream:
    n = 40
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)  # (N, 2, 2, 1), value = index
    split = Split("train", images, np.arange(n, dtype=np.int64), [f"{i}.png" for i in range(n)])
    return ViewStream([BatchLoader(split, 8, seed=100 + k) for k in range(views)], seed=0)


def batches(stream, epoch, limit=None):
    stream.set_epoch(epoch)
    out = []
    for view, images, labels in stream:
        out.append((view, labels.tolist()))
        if limit is not None and len(out) == limit:
            break
    return out


def test_each_view_covers_the_data_once_and_views_interleave():
    stream = make_stream()
    epoch = batches(stream, 0)
    assert len(epoch) == len(stream) == 15
    for k in range(3):
        seen = sorted(i for view, labels in epoch if view == k for i in labels)
        assert seen == list(range(40))
    order = [view for view, _ in epoch]
    assert order != sorted(order)  # interleaved, not view after view
    assert [v for v, _ in batches(make_stream(), 0)] == order  # seeded
    assert [v for v, _ in batches(make_stream(), 1)] != order  # and new each epoch


def test_restored_stream_continues_with_the_remaining_batches():
    whole = batches(make_stream(), 2)
    first = make_stream()
    head = batches(first, 2, limit=7)
    state = first.state_dict()
    assert state == {"epoch": 2, "position": 7}
    resumed = make_stream()
    resumed.load_state_dict(state)
    assert head + batches(resumed, 2) == whole
