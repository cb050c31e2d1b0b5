"""Training's top-k hit counts break ties as ``cnnbench evaluate`` does: the lower class index first;
on a mixup/CutMix batch both labels count, each with its weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnbench.data.augment import create_mix
from cnnbench.evaluate.metrics import score_predictions, top_k_indices
from cnnbench.train.loop import _batch_sums, topk_hits


def lower_index_first(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def test_tied_logits_rank_the_lower_class_first_in_training_and_evaluate():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, (500, 12)).astype(np.float32)  # many ties, also at the 1st and 5th place
    labels = rng.integers(0, 12, 500)
    expected = np.array([lower_index_first(row, 5) for row in logits])
    assert top_k_indices(logits, 5).tolist() == expected.tolist()
    hits = [int(h) for h in topk_hits(torch.from_numpy(logits), torch.from_numpy(labels))]
    assert hits == [int((expected[:, 0] == labels).sum()), int((expected == labels[:, None]).any(1).sum())]
    scores = score_predictions(logits, labels)
    assert (scores.top1 * 500, scores.top5 * 500) == tuple(float(h) for h in hits)


def test_a_mixed_batch_counts_each_label_with_its_weight():
    # Images of one class each (one-hot colour planes), mixed with their rolled partners; the
    # "model" answers the class with the most mass in the mixed image, the right answer for both
    # labels in proportion. Counting only the first label scored it near 50% under mixup (lam
    # falls below 0.5 in half the batches), whatever the model learnt.
    g = torch.Generator().manual_seed(0)
    mix = create_mix({"mixup": 0.2})
    lams, sums = [], torch.zeros(4, dtype=torch.float64)
    for _ in range(50):
        labels = torch.randperm(10, generator=g)[:8]
        images = torch.nn.functional.one_hot(labels, 10).float()[:, :, None, None].expand(8, 10, 4, 4)
        mixed = mix(images, labels, g)
        logits = mixed.inputs.mean((2, 3))
        sums += _batch_sums(torch.tensor(1.0), logits, labels, mixed)
        lams.append(mixed.lam)
    dominant = sum(max(lam, 1.0 - lam) for lam in lams) / len(lams)  # each image's share of its answer
    assert sums[1].item() / sums[3].item() == pytest.approx(dominant)
    assert sums[2].item() == sums[3].item() == 400  # both labels are always in the top 5
    assert 0.85 < dominant and min(lams) < 0.1  # the label weights are far from 50/50, both ways
