"""``BatchPipeline``: uint8 batch on the device -> float32 model input, whole batches at a time."""

from __future__ import annotations

from typing import Callable

import numpy as np

from cnnbench.errors import CnnbenchError

# torchvision's ImageNet weights were trained with these (torchvision.transforms._presets).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _ones(stats, channels):
    return np.ones(channels, dtype=np.float32)


# normalize name -> (scale (C,), shift (C,) or (H, W, C)) with  out = x01 * scale + shift
NORMALIZATIONS: dict[str, Callable] = {
    "none": lambda stats, c: (_ones(stats, c), np.zeros(c, dtype=np.float32)),
    "channel_mean": lambda stats, c: (_ones(stats, c), -np.asarray(stats["channel_mean"], dtype=np.float32)),
    "pixel_mean": lambda stats, c: (_ones(stats, c), -np.asarray(stats["pixel_mean"], dtype=np.float32)),
    "standardize": lambda stats, c: (1 / np.asarray(stats["channel_std"], dtype=np.float32),
                                     -np.asarray(stats["channel_mean"], dtype=np.float32) / np.asarray(stats["channel_std"], dtype=np.float32)),
    "imagenet": lambda stats, c: (1 / IMAGENET_STD, -IMAGENET_MEAN / IMAGENET_STD),
}


class BatchPipeline:
    """Convert, augment, resize and normalise a uint8 (B, C, H, W) batch into float32 (B, C, S, S).

    Order: to float in [0, 1] -> ``augment(x01, generator)`` -> resize to ``input_size`` (bilinear,
    antialiased when shrinking) -> normalise. Normalisation statistics are those of the training
    split at the cache's resolution; the per-pixel mean is resized with the images.

    Normalising is one fused multiply-add over the batch seen as (B, H*W*C) in channels_last
    memory order, with the per-channel constants laid out as a full H*W*C pattern: broadcasting
    a (1, C, 1, 1) constant over channels_last data leaves an innermost loop of length C = 3 that
    does not vectorise. Measured on this 2-core machine (256 x 3 x 64 x 64, one thread, load ~9):
    40-48 ms for to-float/div/sub/div as four broadcast ops vs 14-18 ms this way.
    """

    def __init__(self, normalize: str = "standardize", stats: dict | None = None, input_size: int | None = None,
                 augment: Callable | None = None, channels_last: bool = True, move_normalize: Callable | None = None):
        if normalize not in NORMALIZATIONS:
            raise CnnbenchError(f"normalize: expected one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        if normalize not in ("none", "imagenet") and stats is None:
            raise CnnbenchError(f"normalize={normalize}: needs the training statistics (pass stats=ds.stats)")
        self.normalize, self.stats, self.input_size = normalize, stats, input_size
        self.augment, self.channels_last = augment, channels_last
        # A leading crop/flip runs on the uint8 batch (4x fewer bytes to move than after
        # converting); the rest of the augmentation on the float batch.
        self._moves = getattr(augment, "pixel_moves", None)
        self._float_augment = augment.float_ops if self._moves is not None else augment
        self._patterns: dict = {}
        # A kernel that does the crop, the flips, the conversion and the normalisation of a CPU batch in one
        # pass, with the bits of the steps below (cnnbench.train's nhwc_ops.cpp ``move_normalize``, which
        # the training engine passes in; None: the steps below).
        self.move_normalize = move_normalize

    def _fuses(self, images: "torch.Tensor") -> bool:  # noqa: F821
        """Whether ``move_normalize`` does this batch's whole pipeline: a CPU channels_last batch whose
        augmentation is pixel moves alone (or none) and which is not resized."""
        size = self.input_size
        return (self.move_normalize is not None and self.channels_last and images.device.type == "cpu"
                and self._float_augment is None and (size is None or tuple(images.shape[-2:]) == (size, size))
                and images.permute(0, 2, 3, 1).is_contiguous())

    def resize(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        import torch.nn.functional as F

        size = self.input_size
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        shrinking = size < max(x.shape[-2:])
        # (B, C, H, W) -> (B, C, S, S); antialiasing only matters (and is only defined) when shrinking
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=shrinking, align_corners=False)

    def _pattern(self, x: "torch.Tensor", unit: float, nhwc: bool):  # noqa: F821
        """(scale, shift) flattened to x's (H*W*C or C*H*W) memory order, cached per shape/layout."""
        import torch

        _, c, h, w = x.shape
        key = (x.device, c, h, w, unit, nhwc)
        if key not in self._patterns:
            if self.normalize == "imagenet" and c != 3:
                raise CnnbenchError(f"normalize=imagenet: expects 3-channel images, got {c} (use grayscale=replicate)")
            scale, shift = NORMALIZATIONS[self.normalize](self.stats, c)
            if scale.shape[0] != c or shift.shape[-1] != c:
                raise CnnbenchError(f"normalize={self.normalize}: statistics have {shift.shape[-1]} channels, images {c}")
            scale_t = torch.from_numpy(np.ascontiguousarray(scale)).view(1, c, 1, 1) * unit
            if shift.ndim == 3:  # per-pixel mean (H0, W0, C): resized like the images
                shift_t = self.resize(torch.from_numpy(np.ascontiguousarray(shift)).permute(2, 0, 1)[None])
            else:
                shift_t = torch.from_numpy(np.ascontiguousarray(shift)).view(1, c, 1, 1)
            scale_t, shift_t = (t.expand(1, c, h, w) for t in (scale_t, shift_t))
            order = (0, 2, 3, 1) if nhwc else (0, 1, 2, 3)
            self._patterns[key] = tuple(t.permute(*order).reshape(-1).contiguous().to(x.device) for t in (scale_t, shift_t))
        return self._patterns[key]

    def _normalize(self, x: "torch.Tensor", unit: float) -> "torch.Tensor":  # noqa: F821
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)  # a no-op for the loader's batches
        b = x.shape[0]
        flat = x.permute(0, 2, 3, 1).reshape(b, -1) if self.channels_last else x.reshape(b, -1)  # views
        scale, shift = self._pattern(x, unit, self.channels_last)
        torch.addcmul(shift, flat, scale, out=flat)  # x * scale + shift, in place
        return x

    def __call__(self, images: "torch.Tensor", generator: "torch.Generator | None" = None) -> "torch.Tensor":  # noqa: F821
        import torch

        if images.dtype != torch.uint8:
            raise TypeError(f"BatchPipeline expects uint8 batches from BatchLoader, got {images.dtype}")
        if self._fuses(images):
            nhwc = images.permute(0, 2, 3, 1)  # the loader's channels_last batch: a contiguous (B, H, W, C) view
            if self._moves is not None:
                padding, offsets = self._moves.padding, self._moves.draw(images, generator)
            else:
                zeros = torch.zeros(images.shape[0], dtype=torch.long)
                padding, offsets = 0, (zeros, zeros, zeros.bool(), zeros.bool())
            scale, shift = self._pattern(images, 1.0 / 255.0, True)
            return self.move_normalize(nhwc, padding, *offsets, scale, shift).permute(0, 3, 1, 2)
        if self._moves is not None:
            images = self._moves(images, generator)
        x = images.to(torch.float32)  # (B, C, H, W) in 0..255, the loader's channels_last layout kept
        unit = 1.0 / 255.0
        if self._float_augment is not None:
            x = self._float_augment(x.mul_(unit), generator)  # augment sees [0, 1]
            unit = 1.0
        x = self.resize(x)  # linear, so the 1/255 can wait for the fused normalisation
        return self._normalize(x, unit)
