"""Training's top-k hit counts break ties as ``cnnbench evaluate`` does: the lower class index first."""

from __future__ import annotations

import numpy as np
import torch

from cnnbench.evaluate.metrics import score_predictions, top_k_indices
from cnnbench.train.loop import topk_hits


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
