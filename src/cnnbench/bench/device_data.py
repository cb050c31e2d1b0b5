"""The whole split on the device as one uint8 tensor, batched by indexing (airbench's layout).

``BatchLoader`` gathers each batch from the memory-mapped cache on the host and copies it over;
on a GPU that copy and the host-side gather bound the step rate long before the model does.
``DeviceResidentLoader`` uploads the split once (Tiny ImageNet train80 is 16,000 x 64 x 64 x 3
uint8 = 197 MB) and gathers batches on the device; augmentation then runs there too, in
``BatchPipeline``. It keeps ``BatchLoader``'s order, length and resume state, so the engine's
``ViewStream`` drives it unchanged.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from cnnbench.data import BatchLoader


class DeviceResidentLoader(BatchLoader):
    """``BatchLoader`` whose images and labels live on ``device`` (uint8 (N, C, H, W), int64 (N,))."""

    def __init__(self, split, batch_size: int, device: str | torch.device, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True):
        super().__init__(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, device=str(device))
        # (N, H, W, C) -> (N, C, H, W) view with channels_last strides, as BatchLoader hands out
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)).to(device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.from_numpy(self._indices()).to(self.images.device)  # same order as BatchLoader
        while self.position * self.batch_size < len(indices):
            batch = indices[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                break
            self.position += 1
            yield self.images[batch], self.labels[batch]
        self.epoch, self.position = self.epoch + 1, 0


def hold_on_device(engine, ds, device) -> None:
    """Replace the engine's training stream and val loader by device-resident ones.

    The engine built the stream from one ``BatchLoader`` per augmentation view; each becomes a
    ``DeviceResidentLoader`` with the same batch size and seed, so the batches are the same.
    """
    from cnnbench.train.views import ViewStream

    old = engine.train_stream
    loaders = [DeviceResidentLoader(ds.split("train"), loader.batch_size, device, shuffle=True, seed=loader.seed)
               for loader in old.loaders]
    engine.train_stream = ViewStream(loaders, old.seed)
    val = engine.val_loader
    engine.val_loader = DeviceResidentLoader(val.split, val.batch_size, device, shuffle=False, drop_last=False)
