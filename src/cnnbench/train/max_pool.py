"""Max pooling on channels_last CPU activations in one pass each way (``nhwc_ops.cpp``).

A torchvision ResNet's stem pools a (B, 64, 32, 32) map at 64 px, and torch's channels_last
``max_pool2d_with_indices`` and its backward took 6.4 and 7.2 ms of a 180 ms ResNet-18 training
step here (batch 128, bf16; the backward zero-fills the whole input gradient, then scatters into
it). The kernel keeps which tap of each window won as one uint8 per output value, and its backward
gathers: every input pixel sums the gradients of the windows it won and writes itself once. On the
stem's map: forward 2.0 ms, backward 1.6 ms, against torch's 8.2 ms for the two (scratch, medians
of 9, torch 2.14 on the 2-core AMX Xeon). Results are torch's: the first maximum of a window wins
ties, a NaN wins, padding never does.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnbench.train.native import NHWC_OPS


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


class _MaxPool(torch.autograd.Function):
    """channels_last (B, C, H, W) -> channels_last (B, C, Ho, Wo) window maxima."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        y, taps = NHWC_OPS.module.max_pool_forward(x.permute(0, 2, 3, 1), kernel, stride, padding)
        ctx.save_for_backward(taps)
        ctx.geometry = (x.shape[2], x.shape[3], kernel, stride, padding)
        return y  # a fresh channels_last (B, C, Ho, Wo) tensor, not a view

    @staticmethod
    def backward(ctx, grad_y):
        (taps,) = ctx.saved_tensors
        h, w, kernel, stride, padding = ctx.geometry
        grad_nhwc = grad_y.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        grad_x = NHWC_OPS.module.max_pool_backward(grad_nhwc, taps, h, w, kernel, stride, padding)
        return grad_x.permute(0, 3, 1, 2), None, None, None


class NhwcMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose channels_last float32/bf16 CPU input runs the C++ kernel (same
    results); anything else runs torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._runs_native(x):
            return super().forward(x)
        return _MaxPool.apply(x, *self.geometry())

    def geometry(self) -> tuple[list[int], list[int], list[int]]:
        """(kernel, stride, padding) as two-value lists, the C++ kernels' arguments."""
        return _pair(self.kernel_size), _pair(self.stride), _pair(self.padding)

    def _runs_native(self, x: torch.Tensor) -> bool:
        return (NHWC_OPS.module is not None and x.device.type == "cpu" and x.dim() == 4
                and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous(memory_format=torch.channels_last))


def _eligible(pool: nn.Module) -> bool:
    if type(pool) is not nn.MaxPool2d:
        return False
    kernel, padding = _pair(pool.kernel_size), _pair(pool.padding)
    return (not pool.ceil_mode and not pool.return_indices
            and _pair(pool.dilation) == [1, 1] and kernel[0] * kernel[1] <= 256
            and 2 * padding[0] <= kernel[0] and 2 * padding[1] <= kernel[1])


def use_nhwc_max_pool(model: nn.Module) -> int:
    """Switch ``model``'s plain ``nn.MaxPool2d`` layers (no dilation, ceil_mode or indices) to
    ``NhwcMaxPool2d`` in place. Returns how many were switched: 0 where the kernels cannot be built
    (``NHWC_OPS.error`` says why) and for a model without max pooling, which never builds them."""
    pools = [m for m in model.modules() if _eligible(m)]
    if not pools or NHWC_OPS.load() is None:
        return 0
    for pool in pools:
        pool.__class__ = NhwcMaxPool2d
    return len(pools)

