"""Convolutions whose weight gradient runs on Intel AMX tiles (``amx_conv.cpp``), on the CPU.

(The same C++ file also runs whole small-map convolutions from pixel pairs: ``gemm_conv.PixelPairConv``.)

oneDNN computes a bf16 convolution's forward pass and input gradient near the machine's matmul
speed, but its weight gradient for the 16 x 16 and 8 x 8 maps of a ResNet at 64 px took 3-5x as
long as its own forward pass (2-core AMX Xeon, batch 128: ResNet-18's 64-channel 16 x 16 layers
2.5 ms alone and ~3.5 ms inside a training step, the 128-channel 8 x 8 ones 3.2 and ~4.5 ms).
``AmxConv2d`` keeps oneDNN for the forward pass and the input gradient and computes the weight
gradient with ``amx_conv.cpp``: both maps laid on a zero-padded grid, packed chunk by chunk in
cache, and multiplied with AMX's bf16 tile products (1.45 and 1.50 ms for those layers; layer2's
strided 3 x 3 2.69 -> 0.93 ms, its 1x1 shortcut 1.20 -> 0.23). ResNet-18's 64 px bf16 training
step, model only, with the nine convolutions of layer1 and layer2 switched: +8.7% (paired medians
of 31 alternating steps, session 20; layer3 and layer4 run as matmuls, ``gemm_conv``).

It applies to convolutions with an odd square kernel, padding k // 2 and one stride both ways (no
dilation or groups), output channels in multiples of 32 and input channels in multiples of 32
from 64 up, or an RGB stem's 7 x 3 (4.6-5.1 -> 3.4-4.0 ms, the step +1.5%), whose forward pass runs on AMX too
(``window_forward``: oneDNN's kernel for 3 input channels ran at a third of its speed on the next
layers; the step +0.6-1.0%, session 23): where it measured
faster than oneDNN (``eligible``), in bf16 autocast on channels_last activations, on Linux CPUs with AMX-BF16 (Sapphire Rapids and later); everything
else, and inference, runs torch's convolution unchanged. The gradient sums in fp32 in another
order than oneDNN's and is rounded to bf16 as oneDNN's is (tested against float64).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cnnbench.train.native import Kernels

AMX_CONV = Kernels(Path(__file__).with_name("amx_conv.cpp"), "AMX convolution kernels")

_CHANNEL_BLOCK = 32  # the kernel packs channels (or a kernel row's pixels x channels) in blocks of 32
_WINDOW_TAPS = 7  # fewest kernel rows for which the few-channel window pays (see eligible)


def cpu_has_amx() -> bool:
    """Whether /proc/cpuinfo lists AMX's tiles and bf16 products (no compile needed to say no)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return {"amx_tile", "amx_bf16"} <= set(flags.split())


_unavailable: str | None = None


def load() -> str | None:
    """Build the kernel where the CPU has AMX; None when it can run, else why not."""
    global _unavailable
    if _unavailable is None and AMX_CONV.module is None:
        if not cpu_has_amx():
            _unavailable = "this CPU has no AMX-BF16"
        elif AMX_CONV.load() is None:
            _unavailable = f"the kernel could not be built ({AMX_CONV.error})"
        elif not AMX_CONV.module.available():
            _unavailable = "the kernel was built without AMX or Linux refused the tile state"
    return _unavailable


def load_error() -> str | None:
    """Why the kernel cannot run here, once ``load()`` has tried; else None."""
    return _unavailable


class _AmxConv(torch.autograd.Function):
    """bf16 channels_last convolution (odd k, padding k // 2, any stride): torch's forward pass and input
    gradient, ``amx_conv.cpp``'s weight gradient; an image stem's forward pass (k x C values a kernel row,
    at most 32, no bias) from ``amx_conv.cpp``'s ``window_forward`` too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride = bias is not None, stride
        k = weight.shape[-1]
        if window_forward_takes(weight, bias):
            y = AMX_CONV.module.window_forward(x.permute(0, 2, 3, 1), weight, stride, k // 2)
            if y is not None:  # None: x holds an infinity or a NaN (see amx_conv.cpp)
                return y
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, bias, stride, k // 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        k, s = weight.shape[-1], ctx.stride
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [s, s], [k // 2, k // 2], [1, 1],
                                                         False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = AMX_CONV.module.weight_grad(x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1), k, s, k // 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3), dtype=torch.float32).to(grad.dtype)
        return grad_x, grad_w, grad_b, None


def window_forward_takes(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``_AmxConv`` runs this convolution's forward pass on ``amx_conv.cpp``'s ``window_forward``
    (an image's stem: a kernel row's k x C values fit one block of 32, no bias), unless the batch holds
    an infinity or a NaN."""
    return bias is None and weight.shape[1] * weight.shape[-1] <= _CHANNEL_BLOCK


def eligible(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` the kernel takes, and faster than oneDNN: an odd square kernel with
    padding k // 2 (or "same"), the same stride both ways, zero padding, no dilation or groups,
    output channels in multiples of 32 and either input channels in multiples of 32 from 64 up,
    or an image's few channels under a kernel of 7 or more whose rows' k x C values fit one block
    of 32 (an ImageNet stem). (With that padding every tap that leaves the output map leaves the
    input too, on any map, which the kernel's grid needs.)

    The channel rule is measured (session 20, scratch, batch 128, weight gradient alone, oneDNN's
    time over the kernel's): 3x3 with 64-256 input channels on 8-64 px maps 1.0-2.6x; with 32
    input channels 0.78-1.0 on maps of 16 px and more (its packing is as much work per position,
    for half the products), 1.5 on 8 px; an RGB 7x7 stem 1.3-1.5, 5x5 1.0-1.1, 3x3 0.55-0.7 (fewer
    taps per packed window); a 1x1 on 16 channels 0.75."""
    if type(conv) is not nn.Conv2d:
        return False
    k, s = conv.kernel_size[0], conv.stride[0]
    padding_ok = conv.padding == "same" or tuple(conv.padding) == (k // 2, k // 2)
    channels_ok = ((conv.in_channels % _CHANNEL_BLOCK == 0 and conv.in_channels >= 2 * _CHANNEL_BLOCK)
                   or (conv.in_channels * k <= _CHANNEL_BLOCK and k >= _WINDOW_TAPS))
    return (conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (s, s) and padding_ok
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and channels_ok and conv.out_channels % _CHANNEL_BLOCK == 0)


class AmxConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same state_dict) whose bf16 training passes on
    channels_last CPU input take their weight gradient from ``amx_conv.cpp``."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._runs_amx(input, weight):
            return super()._conv_forward(input, weight, bias)
        dtype = torch.bfloat16
        return _AmxConv.apply(input.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None,
                              self.stride[0])

    @staticmethod
    def _runs_amx(input: torch.Tensor, weight: torch.Tensor) -> bool:
        return (torch.is_grad_enabled() and weight.requires_grad and AMX_CONV.module is not None
                and input.device.type == "cpu" and input.dim() == 4
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and input.is_contiguous(memory_format=torch.channels_last))


def use_amx_convs(model: nn.Module) -> int:
    """Switch every eligible ``nn.Conv2d`` of ``model`` to ``AmxConv2d`` (in place; parameters
    untouched) where the kernel runs here; returns how many were switched (0 where ``load()``
    says why not)."""
    convs = [m for m in model.modules() if eligible(m)]
    if not convs or load() is not None:
        return 0
    for conv in convs:
        conv.__class__ = AmxConv2d
    return len(convs)
