"""Batch augmentation on the device: every op takes a float batch in [0, 1] and a generator.

``create_augment(settings)`` builds the callable that ``BatchPipeline`` runs before resizing
and normalising: ``augment(x01, generator) -> x01`` with ``x01`` of shape (B, C, H, W). Every
op draws its own parameters *per sample* from the one explicit ``torch.Generator``, so a
resumed run that restores the generator's state replays the same augmentation.

Why much of this is hand-written: torchvision's v2 transforms draw one set of parameters per
call, so on a batch tensor ``RandomRotation``, ``GaussianBlur``, ``ColorJitter``,
``RandAugment``, ``RandomErasing`` ... apply the *same* angle / sigma / factor / op / box to
every image (checked with torchvision 0.29). Per-image draws on whole batches need:

- per-sample affine matrices -> ``affine_grid`` + ``grid_sample`` (rotation, translation,
  shear, and RandAugment's geometric ops);
- per-sample blend factors around torchvision's own "degenerate" images: torchvision's
  ``adjust_brightness/contrast/saturation/sharpness(img, f)`` are ``f * img + (1 - f) * deg``
  with ``deg = adjust_*(img, 0)``, so we compute ``deg`` with torchvision once per batch and
  blend with a (B, 1, 1, 1) factor;
- per-sample Gaussian kernels as one grouped convolution.

Where a torchvision op is already per-image on a batch we call it: ``equalize`` and
``autocontrast`` (per-image histograms / min-max), ``center_crop`` + ``resize`` (deterministic),
``torchvision.ops.roi_align`` (one box per image: random resized crop), ``rgb_to_grayscale``.

Mixup and CutMix change the labels, so they are not part of ``augment``; ``create_mix``
returns a ``BatchMix`` that the training loop applies to (inputs, labels).

This module is storage-agnostic (STYLE 6): it knows tensors, never files or datasets, and it
takes plain mappings (the keys of ``cnnbench.train.config.AugmentConfig``) because the data
layer must not import the train layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import RandAugment, TrivialAugmentWide
from torchvision.transforms.v2 import functional as TF

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


# --------------------------------------------------------------------------- random draws
def _uniform(g: torch.Generator, n: int, low: float, high: float, device) -> torch.Tensor:
    """(n,) floats uniform in [low, high) from ``g``."""
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _chosen(g: torch.Generator, n: int, p: float, device) -> torch.Tensor:
    """(n,) bool mask: which samples an op with probability ``p`` applies to."""
    return torch.rand(n, generator=g, device=device) < p


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) so a per-sample value broadcasts over an image batch."""
    return v.view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with a per-sample ratio: factor * x + (1 - factor) * degenerate."""
    f = _per_sample(factor.to(x.dtype))
    return (f * x + (1.0 - f) * degenerate).clamp_(0.0, 1.0)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_sample(mask), a, b)


# --------------------------------------------------------------------------- per-sample ops
def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.adjust_brightness``: the degenerate image is black."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.adjust_contrast`` (blend with each image's mean gray)."""
    return _blend(x, TF.adjust_contrast(x, 0.0), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.adjust_saturation`` (blend with the grayscale image); identity on 1 channel."""
    if x.shape[1] == 1:
        return x
    return _blend(x, TF.adjust_saturation(x, 0.0), factor)


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.adjust_sharpness`` (blend with torchvision's smoothed image)."""
    return _blend(x, TF.adjust_sharpness(x, 0.0), factor)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.solarize``: invert pixels at or above each sample's threshold."""
    return torch.where(x >= _per_sample(threshold.to(x.dtype)), 1.0 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.posterize`` on the uint8 view of a [0, 1] batch: keep ``bits`` high bits."""
    u8 = (x * 255.0).round_().to(torch.uint8)
    mask = (255 - (2 ** (8 - bits.to(torch.int64)) - 1)).to(torch.uint8)  # (B,) e.g. 4 bits -> 0xF0
    return (u8 & _per_sample(mask)).to(x.dtype) / 255.0


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Per-sample Gaussian blur (reflect padding, as ``TF.gaussian_blur``) as one grouped conv."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)  # horizontal pass
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)  # vertical pass
    return y.reshape(b, c, h, w)


def affine(x: torch.Tensor, angle: torch.Tensor | None = None, translate: torch.Tensor | None = None,
           scale: torch.Tensor | None = None, shear: torch.Tensor | None = None,
           center: str = "middle", mode: str = "bilinear") -> torch.Tensor:
    """Per-sample ``TF.affine``: angle (B,) degrees counter-clockwise (as ``TF.rotate``; note
    ``TF.affine`` itself takes clockwise angles), translate (B, 2) pixels,
    scale (B,), shear (B, 2) degrees; ``center`` "middle" or "corner" (torchvision's shear ops
    use the top-left corner). Outside pixels are filled with 0, like torchvision's default."""
    b, _, h, w = x.shape
    dev, dt = x.device, torch.float32
    zeros = torch.zeros(b, device=dev, dtype=dt)
    angle = torch.deg2rad(angle.to(dt)) if angle is not None else zeros
    shear = torch.deg2rad(shear.to(dt)) if shear is not None else torch.zeros(b, 2, device=dev, dtype=dt)
    scale = scale.to(dt) if scale is not None else zeros + 1.0
    translate = translate.to(dt) if translate is not None else torch.zeros(b, 2, device=dev, dtype=dt)
    # torchvision's forward matrix (``_get_inverse_affine_matrix``: R(angle) S SHy SHx) with the
    # angle negated because image rows grow downwards: out = A (in - c) + c + t. Checked to
    # give the same pixels as TF.affine for rotation, translation, scale and shear together.
    rot, sx, sy = -angle, shear[:, 0], shear[:, 1]
    a = torch.cos(rot - sy) / torch.cos(sy)
    b_ = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c_ = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    forward = torch.stack([torch.stack([a, b_], -1), torch.stack([c_, d], -1)], -2) * scale[:, None, None]
    inverse = torch.linalg.inv(forward)
    # Pixel centre c in normalised coordinates ([-1, 1], align_corners=False): middle = 0,
    # corner = -1 (the top-left pixel edge). Convert pixel translations to normalised units.
    half = torch.tensor([w / 2.0, h / 2.0], device=dev, dtype=dt)
    c = torch.zeros(2, device=dev, dtype=dt) if center == "middle" else -torch.ones(2, device=dev, dtype=dt)
    # The inverse map acts on pixel offsets; in normalised units it is S^-1 A^-1 S with S = diag(half).
    inv_n = inverse * half[None, None, :] / half[None, :, None]
    t_n = translate / half
    offset = c - (inv_n @ (c + t_n)[:, :, None])[:, :, 0]
    theta = torch.cat([inv_n, offset[:, :, None]], 2)  # (B, 2, 3): input coords of each output pixel
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


@dataclass
class PixelMoves:
    """Reflect-pad random crop, horizontal and vertical flips as one pass over the batch.

    These ops only move pixels (no interpolation, no new values), so they commute with the
    uint8 -> float conversion and the normalisation: ``BatchPipeline`` runs a leading
    ``PixelMoves`` on the uint8 batch, a quarter of the bytes, before converting. The
    parameters are drawn in the order the separate ops would draw them (crop rows, crop
    columns, horizontal flips, vertical flips), one per sample, so fusing adjacent moves
    changes nothing in the result or in the generator's state.

    On the CPU the batch is flipped once per flip axis in use and each sample is a window
    copied with numpy slicing (~2 us a call, against ~40 us for torch indexing, in scratch
    micro-benchmarks). One epoch of 16,000 64 x 64 images with pad-4 crop + flip through
    ``BatchPipeline``: 0.26-0.42 s across ``cnnbench bench --only data`` runs on this 2-core
    machine, against 1.62 s (a one-off measurement before the change) for the previous float
    path (pad, stack of slices, then flip + where on float).
    On other devices one gather with a computed source index does the whole batch.
    """

    padding: int = 0
    hflip: float = 0.0
    vflip: float = 0.0

    def merged(self, other: "PixelMoves") -> "PixelMoves | None":
        """self followed by other as one op, when the draw order allows it (crop before flips)."""
        if other.padding or (self.hflip and other.hflip) or (self.vflip and other.vflip) or (self.vflip and other.hflip):
            return None
        return PixelMoves(self.padding, self.hflip or other.hflip, self.vflip or other.vflip)

    def draw(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Each sample's window offsets and flips (dy, dx, hflip, vflip) for the batch ``x``, drawn from
        ``g`` in the order described above (also what a fused kernel is given: ``BatchPipeline``)."""
        b, dev, p = x.shape[0], x.device, self.padding
        if p >= min(x.shape[-2:]):
            raise ValueError(f"crop_padding={p}: reflect padding must be smaller than the image ({x.shape[-2]} x {x.shape[-1]})")
        dy = torch.randint(0, 2 * p + 1, (b,), generator=g, device=dev) if p else torch.zeros(b, dtype=torch.long, device=dev)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=g, device=dev) if p else torch.zeros(b, dtype=torch.long, device=dev)
        hflip = _chosen(g, b, self.hflip, dev) if self.hflip > 0 else torch.zeros(b, dtype=torch.bool, device=dev)
        vflip = _chosen(g, b, self.vflip, dev) if self.vflip > 0 else torch.zeros(b, dtype=torch.bool, device=dev)
        return dy, dx, hflip, vflip

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        move = move_pixels_cpu if x.device.type == "cpu" else move_pixels_gather
        return move(x, self.padding, *self.draw(x, g))


def move_pixels_cpu(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor,
                    hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Per sample i: window (dy[i], dx[i]) of the reflect-padded image, then the flips.

    x (B, C, H, W) of any dtype -> (B, C, H, W) with channels_last strides. Written for the
    CPU's costs, as scratch micro-benchmarks on this machine measured them (batch 128 x 64 x 64
    x 3): numpy slicing (~1.5 us a copy; a torch indexing call costs ~40 us), torch's flip
    for whole batches (0.3 ms per uint8 batch; numpy's reversed 3-byte copies are 5x slower),
    and no padded batch (its column borders are 73k scattered 3-byte pixels, 0.93 ms a batch).

    A flip of a crop is the crop of the flipped image at the mirrored offset, so each sample's
    in-image part is one forward copy from the plain or the flipped batch. Reflected columns
    are columns of the horizontally flipped image in forward order, so they are a second
    forward copy from the other source; reflected rows mirror rows already in the output and
    are filled for the whole batch with one fancy-indexed copy per distance k."""
    b, c, h, w = x.shape
    p = padding
    if 2 * p >= h:  # a reflected row may mirror an image row cropped out of the window, which the row pass reads
        return move_pixels_gather(x, padding, dy, dx, hflip, vflip)
    nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    hs, vs = hflip.tolist(), vflip.tolist()
    # shift of each window's top-left corner from the image's, in its (maybe flipped) source
    sy = np.where(vflip.numpy(), p - dy.numpy(), dy.numpy() - p)
    sx = np.where(hflip.numpy(), p - dx.numpy(), dx.numpy() - p)
    needed = set(zip(hs, vs)) | {(not fh, fv) for fh, fv, z in zip(hs, vs, sx.tolist()) if z}
    sources = {key: (nhwc.flip([d for d, on in zip((2, 1), key) if on]) if any(key) else nhwc).numpy()
               for key in needed}
    r0, r1 = np.maximum(0, -sy), h - np.maximum(0, sy)  # out rows [r0, r1) lie inside the image
    out = np.empty((b, h, w, c), dtype=sources[hs[0], vs[0]].dtype)
    for i, (fh, fv, a0, a1, y, z) in enumerate(zip(hs, vs, r0.tolist(), r1.tolist(), sy.tolist(), sx.tolist())):
        src = sources[fh, fv][i, a0 + y:a1 + y]
        if z == 0:
            out[i, a0:a1] = src
        elif z > 0:  # out columns [w-z, w) are source columns w.. -> reflected: mirror columns 1..z
            out[i, a0:a1, :w - z] = src[:, z:]
            out[i, a0:a1, w - z:] = sources[not fh, fv][i, a0 + y:a1 + y, 1:z + 1]
        else:  # out columns [0, -z) are source columns ..-1 -> reflected: mirror columns w-1+z..w-2
            out[i, a0:a1, -z:] = src[:, :w + z]
            out[i, a0:a1, :-z] = sources[not fh, fv][i, a0 + y:a1 + y, w - 1 + z:w - 1]
    for k in range(1, p + 1):  # rows outside the image mirror rows inside, about its first / last row
        top, bottom = np.flatnonzero(r0 >= k), np.flatnonzero(h - r1 >= k)
        out[top, r0[top] - k] = out[top, r0[top] + k]
        out[bottom, r1[bottom] - 1 + k] = out[bottom, r1[bottom] - 1 - k]
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W) channels_last view


def move_pixels_gather(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor,
                       hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """The same as ``move_pixels_cpu`` as one gather: no per-sample work (GPUs, any device)."""
    b, c, h, w = x.shape

    def source(n: int, offset: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        i = torch.arange(n, device=x.device)
        i = torch.where(flip[:, None], n - 1 - i, i) + offset[:, None] - padding  # (B, n) in padded coords
        i = i.abs()  # reflect at 0 ...
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)  # ... and at n-1

    rows, cols = source(h, dy, vflip), source(w, dx, hflip)  # (B, H), (B, W)
    pixel = (torch.arange(b, device=x.device)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    nhwc = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
    return nhwc.index_select(0, pixel.reshape(-1)).view(b, h, w, c).permute(0, 3, 1, 2)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample ``RandomResizedCrop`` back to the batch's own size via ``roi_align`` (one box
    per image). Area and log-aspect are drawn as torchvision does; instead of its 10 rejection
    tries, a box that does not fit is clamped to the image (same distribution when it fits)."""
    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(g, b, scale[0], scale[1], dev) * h * w
    aspect = torch.exp(_uniform(g, b, math.log(ratio[0]), math.log(ratio[1]), dev))
    cw = torch.sqrt(area * aspect).clamp(1.0, w)
    ch = torch.sqrt(area / aspect).clamp(1.0, h)
    x0 = torch.rand(b, generator=g, device=dev) * (w - cw)
    y0 = torch.rand(b, generator=g, device=dev) * (h - ch)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=x0.dtype), x0, y0, x0 + cw, y0 + ch], 1)
    # One bilinear sample at each output pixel's centre, as crop + bilinear resize: boxes are never
    # larger than the output, and more samples per pixel would average neighbours (a blur).
    return roi_align(x, boxes.to(x.dtype), output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def center_crop_resize(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Crop the central ``fraction`` of each side and resize back (same for every image)."""
    h, w = x.shape[-2:]
    cropped = TF.center_crop(x, [max(1, round(h * fraction)), max(1, round(w * fraction))])
    return TF.resize(cropped, [h, w], antialias=True).clamp_(0.0, 1.0)


def random_erasing(x: torch.Tensor, g: torch.Generator, p: float, area: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Per-sample random erasing (Zhong et al.): a box of random area/aspect filled with uniform
    noise, each image its own box. ``v2.RandomErasing`` would erase one box on the whole batch."""
    b, _, h, w = x.shape
    dev = x.device
    a = _uniform(g, b, *area, dev) * h * w
    r = torch.exp(_uniform(g, b, math.log(ratio[0]), math.log(ratio[1]), dev))
    eh = torch.sqrt(a * r).clamp(1, h).floor()
    ew = torch.sqrt(a / r).clamp(1, w).floor()
    y0 = (torch.rand(b, generator=g, device=dev) * (h - eh + 1)).floor()
    x0 = (torch.rand(b, generator=g, device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # (B, H)
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # (B, W)
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # (B, 1, H, W)
    box = box & _per_sample(_chosen(g, b, p, dev))
    noise = torch.rand(x.shape, generator=g, device=dev, dtype=x.dtype)
    return torch.where(box, noise, x)


# --------------------------------------------------------------------------- RandAugment / TrivialAugment
# Magnitude bins, as torchvision's num_magnitude_bins default: RandAugment's magnitude picks bin
# 0..30. cnnbench.train.config checks recipes against the same number (a test keeps them equal).
MAGNITUDE_BINS = 31

# The op tables (magnitude ranges, which ops take a random sign) are torchvision's own, read
# from its classes so both stay identical; the per-sample application below is ours.
def _magnitudes(space: dict, name: str, bins: int, h: int, w: int) -> torch.Tensor | None:
    values = space[name][0](bins, h, w)
    return None if values is None else values.to(torch.float32)


def _apply_auto_op(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply RandAugment op ``name`` to ``x`` (B, C, H, W) with per-sample magnitudes ``m`` (B,)."""
    if name == "Identity":
        return x
    if name in ("ShearX", "ShearY"):
        shear = torch.rad2deg(torch.atan(m))
        pair = torch.stack([shear, torch.zeros_like(shear)] if name == "ShearX" else [torch.zeros_like(shear), shear], 1)
        return affine(x, shear=pair, center="corner", mode="nearest")
    if name in ("TranslateX", "TranslateY"):
        t = m.trunc()  # torchvision uses int(magnitude) pixels
        pair = torch.stack([t, torch.zeros_like(t)] if name == "TranslateX" else [torch.zeros_like(t), t], 1)
        return affine(x, translate=pair, mode="nearest")
    if name == "Rotate":
        return affine(x, angle=m, mode="nearest")
    if name == "Brightness":
        return adjust_brightness(x, 1.0 + m)
    if name == "Color":
        return adjust_saturation(x, 1.0 + m)
    if name == "Contrast":
        return adjust_contrast(x, 1.0 + m)
    if name == "Sharpness":
        return adjust_sharpness(x, 1.0 + m)
    if name == "Posterize":
        return posterize(x, m)
    if name == "Solarize":
        return solarize(x, m)
    if name == "AutoContrast":
        return TF.autocontrast(x)
    if name == "Equalize":
        return TF.equalize(x)
    raise ValueError(f"unknown auto-augment op {name!r}")


@dataclass
class AutoAugmentBatch:
    """RandAugment (fixed magnitude bin, ``num_ops`` rounds) or TrivialAugmentWide (one op, random
    bin) with the op, bin and sign drawn per sample; samples sharing an op run as one sub-batch."""

    space: dict
    num_ops: int
    magnitude_bin: int | None  # None: uniform over bins per sample (TrivialAugment)
    bins: int = MAGNITUDE_BINS

    def __post_init__(self):
        # A bin past the table is an IndexError at the first batch; a negative one silently
        # indexes from the end (the strongest bins).
        if self.magnitude_bin is not None and not 0 <= self.magnitude_bin < self.bins:
            raise ValueError(f"magnitude bin {self.magnitude_bin}: expected 0..{self.bins - 1}")
        if self.num_ops < 1:
            raise ValueError(f"num_ops {self.num_ops}: expected at least 1")

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        names = list(self.space)
        dev = x.device
        for _ in range(self.num_ops):
            op = torch.randint(0, len(names), (b,), generator=g, device=dev)
            if self.magnitude_bin is None:
                level = torch.randint(0, self.bins, (b,), generator=g, device=dev)
            else:
                level = torch.full((b,), self.magnitude_bin, device=dev)
            sign = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0)
            out = x.clone()
            for k, name in enumerate(names):
                idx = (op == k).nonzero().flatten()
                if idx.numel() == 0 or name == "Identity":
                    continue
                table = _magnitudes(self.space, name, self.bins, h, w)
                m = torch.zeros(idx.numel(), device=dev) if table is None else table.to(dev)[level[idx]]
                if self.space[name][1]:  # signed op
                    m = m * sign[idx]
                out[idx] = _apply_auto_op(name, x[idx], m)
            x = out
        return x


# --------------------------------------------------------------------------- the pipeline
@dataclass
class BatchAugment:
    """An ordered list of named per-sample ops; ``augment(x01, g) -> x01``.

    Adjacent ``PixelMoves`` are fused into one entry named ``"crop_padding+hflip"``; the
    leading ``PixelMoves`` (``pixel_moves``) may run on the uint8 batch before the float ops
    (``float_ops``), which is how ``BatchPipeline`` runs them."""

    ops: list[tuple[str, Op]]

    def __post_init__(self):
        fused: list[tuple[str, Op]] = []
        for name, op in self.ops:
            if fused and isinstance(op, PixelMoves) and isinstance(fused[-1][1], PixelMoves):
                both = fused[-1][1].merged(op)
                if both is not None:
                    fused[-1] = (f"{fused[-1][0]}+{name}", both)
                    continue
            fused.append((name, op))
        self.ops = fused

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for _, op in self.ops:
            x = op(x, g)
        return x

    @property
    def pixel_moves(self) -> PixelMoves | None:
        """The leading op when it only moves pixels (safe on uint8 before normalising)."""
        return self.ops[0][1] if isinstance(self.ops[0][1], PixelMoves) else None

    @property
    def float_ops(self) -> "BatchAugment | None":
        """The ops after ``pixel_moves`` (all of them when there is none), or None."""
        rest = self.ops[1:] if self.pixel_moves is not None else self.ops
        return BatchAugment(rest) if rest else None

    @property
    def names(self) -> list[str]:
        return [part for name, _ in self.ops for part in name.split("+")]


def _affine_op(rotate: float, translate: float) -> Op:
    def op(x, g):
        b, _, h, w = x.shape
        angle = _uniform(g, b, -rotate, rotate, x.device)
        shift = torch.stack([_uniform(g, b, -translate, translate, x.device) * w,
                             _uniform(g, b, -translate, translate, x.device) * h], 1)
        return affine(x, angle=angle, translate=shift)
    return op


def _blur_op(p: float, sigma: tuple[float, float]) -> Op:
    def op(x, g):
        chosen = _chosen(g, x.shape[0], p, x.device)
        s = _uniform(g, x.shape[0], sigma[0], sigma[1], x.device)
        idx = chosen.nonzero().flatten()
        if idx.numel():
            x = x.clone()
            x[idx] = gaussian_blur(x[idx], s[idx])
        return x
    return op


def _jitter_factors(g: torch.Generator, b: int, strength: float, device) -> torch.Tensor:
    """Per-image factors in [max(0, 1 - strength), 1 + strength], as torchvision's ColorJitter
    draws them: a strength above 1 never gives a negative (inverting) factor."""
    return _uniform(g, b, max(0.0, 1.0 - strength), 1.0 + strength, device)


JITTER_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Per image i, apply ``JITTER_ADJUSTMENTS[order[i, k]]`` with ``factors[i, order[i, k]]`` for
    k = 0, 1, 2: torchvision's ColorJitter with each image's own order (it permutes the order on
    every call; the order matters, contrast and saturation blend with image statistics)."""
    x = x.clone()  # written in place below, per group of images
    for k in range(order.shape[1]):
        for j, adjust in enumerate(JITTER_ADJUSTMENTS):
            idx = (order[:, k] == j).nonzero().flatten()
            if idx.numel():
                x[idx] = adjust(x[idx], factors[idx, j])
    return x


def _jitter_op(strength: float) -> Op:
    def op(x, g):
        b = x.shape[0]
        factors = torch.stack([_jitter_factors(g, b, strength, x.device) for _ in JITTER_ADJUSTMENTS], dim=1)
        order = torch.rand(b, len(JITTER_ADJUSTMENTS), generator=g, device=x.device).argsort(dim=1)
        return color_jitter(x, factors, order)
    return op


def _brightness_op(b_range: float) -> Op:
    def op(x, g):
        return adjust_brightness(x, _jitter_factors(g, x.shape[0], b_range, x.device))
    return op


# Geometric ops first (they move pixels), then photometric, then the policy searches, then
# erasing last (as in torchvision's references: RandomErasing after everything else).
# Each entry: (settings key, is-active test, builder from the settings).
_OP_TABLE: list[tuple[str, Callable[[Mapping], bool], Callable[[Mapping], Op]]] = [
    ("crop_padding", lambda s: s["crop_padding"] > 0, lambda s: PixelMoves(padding=int(s["crop_padding"]))),
    ("random_resized_crop", lambda s: s["random_resized_crop"] is not None,
     lambda s: lambda x, g: random_resized_crop(x, g, tuple(s["random_resized_crop"]))),
    ("center_crop", lambda s: s["center_crop"] is not None,
     lambda s: lambda x, g: center_crop_resize(x, s["center_crop"])),
    ("hflip", lambda s: s["hflip"] > 0, lambda s: PixelMoves(hflip=s["hflip"])),
    ("vflip", lambda s: s["vflip"] > 0, lambda s: PixelMoves(vflip=s["vflip"])),
    ("rotate_translate", lambda s: s["rotate"] > 0 or s["translate"] > 0,
     lambda s: _affine_op(s["rotate"], s["translate"])),
    ("brightness", lambda s: s["brightness"] > 0, lambda s: _brightness_op(s["brightness"])),
    ("color_jitter", lambda s: s["color_jitter"] > 0, lambda s: _jitter_op(s["color_jitter"])),
    ("blur", lambda s: s["blur"] > 0, lambda s: _blur_op(s["blur"], tuple(s["blur_sigma"]))),
    ("randaugment", lambda s: s["randaugment"] is not None,
     lambda s: AutoAugmentBatch(RandAugment._AUGMENTATION_SPACE, int(s["randaugment"][0]), int(s["randaugment"][1]))),
    ("trivialaugment", lambda s: bool(s["trivialaugment"]),
     lambda s: AutoAugmentBatch(TrivialAugmentWide._AUGMENTATION_SPACE, 1, None)),
    ("random_erasing", lambda s: s["random_erasing"] > 0,
     lambda s: lambda x, g: random_erasing(x, g, s["random_erasing"])),
]

DEFAULTS: dict[str, Any] = {
    "hflip": 0.0, "vflip": 0.0, "rotate": 0.0, "translate": 0.0, "brightness": 0.0, "crop_padding": 0,
    "random_resized_crop": None, "center_crop": None, "blur": 0.0, "blur_sigma": (0.1, 2.0),
    "color_jitter": 0.0, "randaugment": None, "trivialaugment": False, "random_erasing": 0.0,
    "mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0, "sets": [],
}


def _resolve(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(DEFAULTS)
    for key, value in (settings or {}).items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown augmentation setting {key!r}; valid: {', '.join(DEFAULTS)}")
        values[key] = value
    return values


def create_augment(settings: Mapping[str, Any] | None) -> BatchAugment | None:
    """The per-image augmentation for ``settings`` (AugmentConfig keys), or None when nothing is on."""
    values = _resolve(settings)
    ops = [(name, build(values)) for name, active, build in _OP_TABLE if active(values)]
    return BatchAugment(ops) if ops else None


# --------------------------------------------------------------------------- mixup / cutmix
@dataclass
class MixedBatch:
    """A mixed batch: the loss is lam * CE(out, labels_a) + (1 - lam) * CE(out, labels_b)."""

    inputs: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float


@dataclass
class BatchMix:
    """Mixup (Zhang et al.) and CutMix (Yun et al.) with one lambda per batch, partner = the batch
    rolled by one (as torchvision's v2.MixUp/CutMix). Hand-written because v2's versions draw
    lambda from the global RNG via torch.distributions (no generator argument); here lambda comes
    from the run's augmentation generator so a resumed run draws the same values."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0

    def _beta(self, alpha: float, g: torch.Generator) -> float:
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> MixedBatch | None:
        """The mixed batch, or None when this batch stays clean (probability 1 - prob). At prob 1
        nothing extra is drawn, so runs without mix_prob keep the random stream they always had."""
        if self.prob < 1.0 and not bool(torch.rand(1, generator=g, device=g.device).item() < self.prob):
            return None
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or
                                          bool(torch.rand(1, generator=g, device=g.device).item() < 0.5))
        lam = self._beta(self.cutmix if use_cutmix else self.mixup, g)
        x_b, y_b = x.roll(1, 0), y.roll(1, 0)
        if not use_cutmix:
            return MixedBatch(x * lam + x_b * (1.0 - lam), y, y_b, lam)
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = int(torch.randint(0, h, (1,), generator=g, device=g.device).item())
        cx = int(torch.randint(0, w, (1,), generator=g, device=g.device).item())
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = x_b[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area decides the label weight
        return MixedBatch(mixed, y, y_b, lam)


def create_mix(settings: Mapping[str, Any] | None) -> BatchMix | None:
    """The label-mixing op for ``settings`` (its ``mixup``/``cutmix`` alphas), or None."""
    values = _resolve(settings)
    if values["mixup"] <= 0 and values["cutmix"] <= 0:
        return None
    return BatchMix(float(values["mixup"]), float(values["cutmix"]), float(values["mix_prob"]))
