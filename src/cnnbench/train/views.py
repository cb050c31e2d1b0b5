"""Training batches from one or more augmentation "views" of the training split.

One report doubled its training set with two fixed augmentation sets (a ConcatDataset of the
data under transform 1 and under transform 2). ``augment.sets`` does that: an epoch visits
the data once with the section's own augmentation (view 0) and once more per entry of
``sets`` (view k), each view through its own ``BatchLoader`` (its own shuffle) and its own
``BatchPipeline``. Batches of the views are interleaved in a seeded order, so every batch
comes from one view and the epoch mixes them like the report's shuffled concatenation.

Position in the epoch is one number (batches handed out); on resume each view's loader is
put back at the number of its own batches that came before that position.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ViewStream:
    """Iterate ``(view, images, labels)`` over the batches of all views for one epoch."""

    def __init__(self, loaders: list, seed: int):
        self.loaders = loaders
        self.seed = seed
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def order(self, epoch: int) -> np.ndarray:
        """The view of each batch of ``epoch`` (all zeros with one view)."""
        views = np.repeat(np.arange(len(self.loaders)), [len(loader) for loader in self.loaders])
        if len(self.loaders) == 1:
            return views
        return np.random.default_rng([self.seed, epoch, len(self.loaders)]).permutation(views)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0
        self._sync_loaders()

    def _sync_loaders(self) -> None:
        done = self.order(self.epoch)[:self.position]
        for k, loader in enumerate(self.loaders):
            loader.load_state_dict({"epoch": self.epoch, "position": int((done == k).sum())})

    def __iter__(self) -> Iterator[tuple[int, "torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        order = self.order(self.epoch)
        iterators = [iter(loader) for loader in self.loaders]
        while self.position < len(order):
            k = int(order[self.position])
            images, labels = next(iterators[k])
            self.position += 1
            yield k, images, labels
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._sync_loaders()
