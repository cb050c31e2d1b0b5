"""Batch norm (+ residual add, + ReLU) in one pass each way, for channels_last bf16 training on the CPU.

Under bf16 autocast a ResNet's batch norms receive channels_last bf16 activations, and on this
2-core AMX Xeon ATen's batch norm for that layout is slow: forward 13.3 ms for a (128, 64, 32, 32)
tensor, against 3.6 ms for the same tensor in NCHW and 1.7 ms for a copy of it, and the ReLU and
residual add after it read and write the tensor again, forward and backward (torch 2.15, scratch
measurement, medians of 9). Taking every batch norm and ReLU out of ResNet-18's bf16 training step
made it 27% faster (252 -> 320 img/s, model only, batch 128, the two alternating in one process):
the ceiling of what a faster batch norm can give. ``fused_bn.cpp`` does the forward in two reads of
the input and one write (statistics, then normalise + add + clamp) and the backward in two reads
of the gradient, input and output and one write; ``python benchmarks/probe_convs.py`` prints the
whole step with and without it.

A torchvision ResNet's stem (batch norm, ReLU, 3x3/2 max pool on a (B, 64, 32, 32) map at 64 px)
goes one step further where the pool is cnnbench's (``train.pool_impl: auto``): ``bn_relu_pool_*``
pools x before normalising (the normalisation is monotonic per channel, so only each window's winner
is normalised, to the same bits) and its backward gathers each pixel's gradient from the windows it
won straight into the batch norm's backward, so the pool's H x W gradient is never written. Its taps
differ from the two kernels' only in windows where two pixels round to one bf16 output: the gradient
goes to the larger x (the float32 winner) instead of the first. Session 19, the stem's map (scratch,
medians of 21 alternating calls, cold caches): forward 7.2 -> 6.7 ms, backward 8.2 -> 4.5; ResNet-18's
bf16 step +3.6% (medians of 41 alternating steps, ``python benchmarks/probe_convs.py`` prints it).

The C++ is compiled on first use (about 40 s here, cached under torch's extension folder, keyed
by the source, the flags and the CPU); without a working compiler, or for anything but
training-mode bf16 on the CPU, the modules fall back to torch's own batch norm and ReLU.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from cnnbench.train.max_pool import NhwcMaxPool2d
from cnnbench.train.native import Kernels

FUSED_BN = Kernels(Path(__file__).with_name("fused_bn.cpp"), "fused batch-norm kernel")


def load_extension():
    """The compiled kernels, or None (with the reason in ``load_error()``) where they cannot be built."""
    return FUSED_BN.load()


def load_error() -> str | None:
    return FUSED_BN.error


class _BatchNormAct(torch.autograd.Function):
    """channels_last bf16 (N, C, H, W) -> [relu](batch_norm(x) [+ residual]), a fresh channels_last
    tensor (a view here would turn an in-place ReLU after it into autograd's slow view replay:
    DenseNet-121's step ran 78 -> 48 img/s that way); mean and var come back for the running stats."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, relu):
        y, mean, invstd, var = FUSED_BN.module.bn_forward(x, weight, bias, residual, eps, relu)
        ctx.save_for_backward(x, y if relu else None, mean, invstd, weight)
        ctx.relu, ctx.has_residual = relu, residual is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, y, mean, invstd, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        grad_x, grad_w, grad_b, grad_z = FUSED_BN.module.bn_backward(grad_y, x, y if y is not None else x, mean, invstd,
                                                                weight, ctx.relu, ctx.has_residual and ctx.relu)
        grad_r = (grad_z if ctx.relu else grad_y) if ctx.has_residual else None
        return grad_x, grad_w.to(weight.dtype), grad_b.to(weight.dtype), grad_r, None, None


class _BatchNormReluPool(torch.autograd.Function):
    """channels_last bf16 (N, C, H, W) -> max_pool(relu(batch_norm(x))), a fresh channels_last tensor,
    in one C++ call each way (``bn_relu_pool_forward``: the pool runs on x before normalising, so only
    the window winners are normalised, and the backward never writes the H x W gradient of the pool);
    mean and var come back for the running stats."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, kernel, stride, padding):
        y, taps, winners, mean, invstd, var = FUSED_BN.module.bn_relu_pool_forward(x, weight, bias, eps, kernel,
                                                                                     stride, padding)
        ctx.save_for_backward(x, y, taps, winners, mean, invstd, weight)
        ctx.geometry = (kernel, stride, padding)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, y, taps, winners, mean, invstd, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        grad_x, grad_w, grad_b = FUSED_BN.module.bn_relu_pool_backward(grad_y, taps, y, winners, x, mean, invstd,
                                                                      weight, *ctx.geometry)
        return grad_x, grad_w.to(weight.dtype), grad_b.to(weight.dtype), None, None, None, None


class FusedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state_dict) whose training-mode forward on
    channels_last bf16 CPU input runs ``fused_bn.cpp``; ``forward(x, residual, relu)`` also adds a
    residual and applies a ReLU in the same pass, which ``FusedBasicBlock`` and the ResNet stem use."""

    fused_relu = False
    """Apply the ReLU that followed this batch norm in the model (``use_fused_batchnorm`` set it
    and replaced that ReLU by ``nn.Identity``), in every mode."""

    @property
    def fused_pool(self) -> NhwcMaxPool2d | None:
        """The max pool that followed this batch norm and its ReLU (a ResNet stem's), the submodule
        ``pool`` where ``use_fused_batchnorm`` moved it here (the model's own became ``nn.Identity``):
        applied after the ReLU in every mode, in the same C++ call in training (``_BatchNormReluPool``)."""
        return self._modules.get("pool")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool | None = None) -> torch.Tensor:
        relu = self.fused_relu if relu is None else relu
        pool = self.fused_pool
        if pool is not None and residual is None and relu and self._fusable(x, None):
            y, mean, var = _BatchNormReluPool.apply(x, self.weight, self.bias, self.eps, *pool.geometry())
            self._update_running_stats(x, mean, var)
            return y
        if not self._fusable(x, residual):
            y = super().forward(x)
            if residual is not None:
                y = y + residual
            y = F.relu(y) if relu else y
        else:
            y, mean, var = _BatchNormAct.apply(x, self.weight, self.bias, residual, self.eps, relu)
            self._update_running_stats(x, mean, var)
        return pool(y) if pool is not None else y

    def _update_running_stats(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        rows = x.numel() // x.shape[1]
        if all(t.dtype == torch.float32 and t.is_contiguous() for t in (self.running_mean, self.running_var, mean, var)):
            # one C++ call, the bits of the torch ops below (their Python cost ResNet-18's step ~3 ms)
            FUSED_BN.module.update_running_stats(self.running_mean, self.running_var, self.num_batches_tracked, mean, var,
                                                 -1.0 if self.momentum is None else self.momentum, rows)
        else:
            self._update_running_stats_in_torch(rows, mean, var)

    def _update_running_stats_in_torch(self, rows: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """``nn.BatchNorm2d``'s update of the running statistics in torch's ops (buffers of other dtypes;
        the reference the C++ update is tested against)."""
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_((var * (rows / max(rows - 1, 1))).to(self.running_var.dtype), momentum)

    def _fusable(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        if not (self.training and self.affine and self.track_running_stats and FUSED_BN.module is not None):
            return False
        if x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] < 2:
            return False
        if not x.is_contiguous(memory_format=torch.channels_last):
            return False
        if residual is not None and (residual.dtype != torch.bfloat16 or residual.shape != x.shape
                                     or not residual.is_contiguous(memory_format=torch.channels_last)):
            return False
        return True  # the kernels add their partial sums in a fixed order: deterministic runs stay exact


class _Fork(torch.autograd.Function):
    """x -> (x, x), views of it for a residual block's two branches, whose gradients the backward adds
    out of place in one C++ pass (``fused_bn.cpp``'s ``add_grads``, torch's bits) where they are bf16
    in one memory order.

    Without it autograd adds the two in place into one of them (torch's ``add_``), which with both
    out of cache took 1.69-1.91 ms for ResNet-18's (128, 64, 16, 16) layer1 map here, against 0.79
    for torch's out-of-place add and 0.66 for ``add_grads`` (session 22, scratch, medians of 9, a
    600 MB buffer written between calls); ResNet-18 at 64 px adds five such maps (layer1's three,
    layer2's two) and three smaller ones per step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        ctx.set_materialize_grads(False)
        return x.view_as(x), x.view_as(x)

    @staticmethod
    def backward(ctx, grad_a, grad_b):
        if grad_a is None or grad_b is None:
            return grad_b if grad_a is None else grad_a
        same_bf16 = (grad_a.dtype == grad_b.dtype == torch.bfloat16 and grad_a.shape == grad_b.shape
                     and grad_a.dim() == 4 and grad_a.device.type == "cpu" and FUSED_BN.module is not None
                     and all(g.is_contiguous(memory_format=torch.channels_last) for g in (grad_a, grad_b)))
        return FUSED_BN.module.add_grads(grad_a, grad_b) if same_bf16 else grad_a + grad_b


def fork(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual block's input for its two branches: ``_Fork`` where autograd will add their
    gradients (training, bf16 on the CPU), else x twice."""
    if torch.is_grad_enabled() and x.requires_grad and x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return _Fork.apply(x)
    return x, x


class FusedBasicBlock(BasicBlock):
    """torchvision's ``BasicBlock`` with ``bn1 + relu`` and ``bn2 + residual + relu`` fused, and its
    input's two gradients added by ``_Fork``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skip = fork(x)
        out = self.bn1(self.conv1(x), relu=True)
        identity = self.downsample(skip) if self.downsample is not None else skip
        return self.bn2(self.conv2(out), residual=identity, relu=True)


class FusedBottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` with each batch norm fused with what follows it, and its input's
    two gradients added by ``_Fork``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skip = fork(x)
        out = self.bn1(self.conv1(x), relu=True)
        out = self.bn2(self.conv2(out), relu=True)
        identity = self.downsample(skip) if self.downsample is not None else skip
        return self.bn3(self.conv3(out), residual=identity, relu=True)


def use_fused_batchnorm(model: nn.Module) -> int:
    """Switch ``model``'s batch norms to ``FusedBatchNorm2d`` in place (parameters and state_dict
    untouched): every ``nn.BatchNorm2d``; torchvision's ResNet blocks fuse their ReLUs and residual
    adds; a ``bn1`` followed by a module ``relu`` only used after it (a torchvision ResNet's stem)
    takes the ReLU over, and the max pool after that ReLU where it is an ``NhwcMaxPool2d`` (a
    torchvision ResNet's stem, once ``use_nhwc_max_pool`` ran). Returns how many batch norms were switched, 0 where the kernels cannot
    be built (``load_error()`` says why); a model without batch norms never builds them."""
    if not any(type(m) is nn.BatchNorm2d for m in model.modules()) or load_extension() is None:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = FusedBatchNorm2d
            switched += 1
        elif type(module) is BasicBlock:
            module.__class__ = FusedBasicBlock
        elif type(module) is Bottleneck:
            module.__class__ = FusedBottleneck
    stem_bn, stem_relu = getattr(model, "bn1", None), getattr(model, "relu", None)
    if isinstance(stem_bn, FusedBatchNorm2d) and type(stem_relu) is nn.ReLU and getattr(model, "stem_relu_follows_bn1", False):
        stem_bn.fused_relu = True
        model.relu = nn.Identity()
        # the stem's max pool too, where it is cnnbench's (``train.pool_impl: auto``: torch's stays torch's)
        if type(getattr(model, "maxpool", None)) is NhwcMaxPool2d and getattr(model, "stem_pool_follows_relu", False):
            stem_bn.add_module("pool", model.maxpool)
            model.maxpool = nn.Identity()
    return switched


def fused_pools(model: nn.Module) -> int:
    """How many max pools ``use_fused_batchnorm`` took into a batch norm (a ResNet stem's: 0 or 1)."""
    return sum(isinstance(m, FusedBatchNorm2d) and m.fused_pool is not None for m in model.modules())
