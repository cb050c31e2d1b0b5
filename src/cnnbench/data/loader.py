"""``BatchLoader``: seeded, sharded uint8 batches straight out of the memory-mapped cache.

No worker processes and no per-image Python: one batch is one fancy-indexing read of the
(N, H, W, C) array, handed to the device as a (B, C, H, W) view in channels_last layout. The
float conversion, augmentation, resizing and normalisation happen on the whole batch in
``BatchPipeline``. The order of an epoch depends only on (seed, epoch), so a run resumed from
``state_dict()`` sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.data.dataset import Split


class BatchLoader:
    """Iterate a ``Split`` in batches of (images uint8 (B, C, H, W), labels int64 (B,)).

    ``batch_size`` is per rank (as with torch's DataLoader + DistributedSampler). Each epoch's
    permutation is shared by all ranks; rank r takes every ``world_size``-th index from r. With
    ``drop_last`` every rank gets the same number of full batches (the permutation's tail is cut
    to a multiple of world_size x batch_size); without it no image is repeated or lost, and ranks
    may differ by one image — what exact evaluation needs.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 device: str = "cpu", rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise CnnbenchError(f"batch_size: expected a positive number, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise CnnbenchError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.drop_last, self.device, self.rank, self.world_size = drop_last, device, rank, world_size
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order. Setting the current epoch again keeps the position (resume)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def _indices(self) -> np.ndarray:
        """This rank's image indices for the current epoch, in order."""
        n = len(self.split)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            per_rank = (n // self.world_size) // self.batch_size * self.batch_size
            return order[self.rank::self.world_size][:per_rank]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        count = len(self._indices())
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        import torch

        indices = self._indices()
        pin = str(self.device).startswith("cuda")
        while self.position * self.batch_size < len(indices):
            batch = indices[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                break
            images = self.split.images[batch]  # one gather from the memory map -> (B, H, W, C)
            x = torch.from_numpy(images).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W), channels_last strides
            y = torch.from_numpy(self.split.labels[batch])
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            self.position += 1
            yield x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
        self.epoch, self.position = self.epoch + 1, 0  # a finished pass moves on to the next epoch

    def state_dict(self) -> dict:
        """{"epoch", "position"}: enough to continue mid-epoch with the same order."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.position > len(self):
            raise CnnbenchError(f"loader state: position {self.position} is past the {len(self)} batches of an epoch")
