"""bf16 copies of the weights, written by the optimiser step, read by the next forward pass (CPU, bf16 autocast).

Under bf16 autocast each convolution and linear layer casts its float32 weight to bf16 in every
forward pass, and autograd casts the bf16 gradient back; torch's SGD then updates the float32
weight in three passes over it (Adam, unfused, in seven). ``SGDWithCopies`` and ``AdamWithCopies``
(Adam and AdamW) do the whole update in one pass per tensor (``sgd_step.cpp``) and write the
weight's bf16 rounding in the same pass; the layers switched by ``attach_weight_copies`` feed that
copy to their operator instead of casting (``_UseCopy``), and the gradient reaches the float32
weight as float32, or stays bf16 for the step (``bf16_grads``). The copy is exactly what
autocast's cast would produce (round to nearest even), and the update is torch's default CPU SGD
or Adam operation for operation, so a run's weights are the same bits as with torch's unfused
optimiser (tested; torch's fused kernels round in another order).

A copy is used only while it is current: it records the weight's version counter after the step
that wrote it, and any other change to the weight (loading a checkpoint, a step by another
optimiser, an in-place edit under ``torch.no_grad()``) bumps that counter, so the layer casts as
before until the next step writes a fresh copy. An edit through ``weight.data`` is not seen (it
bypasses the version counter, as it bypasses autograd): the forward passes before the next step
still read the old copy. Copies are not state: they are not in the state_dict or the checkpoint, and
a deep copy of the model (the EMA's) starts without them.

Why hand-written: torch has no optimiser step that also emits a low-precision copy of the weights
for the CPU (its ``fused`` SGD and Adam update in place only), and autocast's own cast cache lasts
one forward pass. ``python benchmarks/probe_weight_copies.py`` times it against torch's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.train.amx_conv import AmxConv2d
from cnnbench.train.gemm_conv import GemmConv2d
from cnnbench.train.native import Kernels

SGD_STEP = Kernels(Path(__file__).with_name("sgd_step.cpp"), "one-pass SGD and Adam steps")


class WeightCopy:
    """A layer's bf16 weight as the last step left it (``tensor``, None before the first step) and
    the weight's version counter right after that step. Deep copies and pickles of the model
    carry no copy (``None``): another model's weights have other versions.

    With ``holds_grad`` (``attach_weight_copies(..., bf16_grads=True)``) the weight's gradient is
    kept here as the bf16 tensor the layer's backward produced (``grad``; float32 once a second
    backward before the step adds to it) instead of being widened into ``weight.grad``: the step
    reads it directly. ``weight.grad`` then stays None."""

    __slots__ = ("tensor", "version", "holds_grad", "grad", "used")

    def __init__(self, holds_grad: bool = False) -> None:
        self.tensor: torch.Tensor | None = None
        self.version = -1
        self.holds_grad = holds_grad
        self.grad: torch.Tensor | None = None
        self.used: tuple | None = None  # (the copy as the current forward pass uses it, its version, grad mode)

    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return type(None), ()

    def add_grad(self, grad: torch.Tensor) -> None:
        """Keep ``grad`` (bf16), or add it to the one kept (two backward passes before one step) in
        float32, as autograd accumulates into a float32 ``weight.grad``. (Uses within one forward
        pass of the model share one copy tensor, whose gradients autograd has already summed.)"""
        self.grad = grad if self.grad is None else self.grad.float() + grad.float()


class _UseCopy(torch.autograd.Function):
    """The bf16 copy forward; backward, the gradient cast to the float32 weight's dtype, which is
    the backward of autocast's cast — or, where the copy holds gradients, the bf16 gradient kept
    on the copy for the step and none for the weight."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, copy: torch.Tensor, holder: WeightCopy) -> torch.Tensor:
        ctx.dtype, ctx.holder = weight.dtype, holder
        return copy.view_as(copy)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.holder.holds_grad:
            ctx.holder.add_grad(grad)
            return None, None, None
        return grad.to(ctx.dtype), None, None


def forward_weight(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s current bf16 copy where the layer runs under CPU autocast to the copy's dtype,
    else ``weight`` itself (autocast then casts it, as without copies)."""
    copy: WeightCopy | None = module.__dict__.get("weight_copy")
    if copy is None or copy.tensor is None or weight._version != copy.version:
        return weight
    if not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == copy.tensor.dtype):
        return weight
    # A weight used twice in one forward pass gets the same tensor both times, as autocast's cast
    # cache gives it: autograd then adds the two bf16 gradients before the one cast back (the
    # model's forward pre-hook, set by attach_weight_copies, starts each pass afresh).
    key = (copy.version, torch.is_grad_enabled())
    if copy.used is not None and copy.used[1:] == key:
        return copy.used[0]
    used = _UseCopy.apply(weight, copy.tensor, copy)
    copy.used = (used, *key)
    return used


class CopyConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs on its weight's bf16 copy where one is current."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(input, forward_weight(self, weight), bias)


class CopyGemmConv2d(GemmConv2d):
    """``GemmConv2d`` (im2col + matmul) that runs on its weight's bf16 copy where one is current."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(input, forward_weight(self, weight), bias)


class CopyAmxConv2d(AmxConv2d):
    """``AmxConv2d`` (AMX weight gradient) that runs on its weight's bf16 copy where one is current."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(input, forward_weight(self, weight), bias)


class CopyLinear(nn.Linear):
    """``nn.Linear`` that runs on its weight's bf16 copy where one is current."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, forward_weight(self, self.weight), self.bias)


SWITCHES = {nn.Conv2d: CopyConv2d, GemmConv2d: CopyGemmConv2d, AmxConv2d: CopyAmxConv2d, nn.Linear: CopyLinear}


class CopyingOptimizer(torch.optim.Optimizer):
    """What ``SGDWithCopies`` and ``AdamWithCopies`` share: a step that runs ``sgd_step.cpp`` — one
    pass per tensor, the same bits as torch's default CPU step — and writes the bf16 copies of the
    weights ``attach_weight_copies`` registered. The state and state_dict are torch's optimiser's,
    so checkpoints move freely between the two. Where the kernel does not apply (a non-float32 or
    sparse tensor, a tensor learning rate, ``differentiable``, ``capturable``, ``amsgrad``) the
    whole step is torch's, and the copies go stale by the weights' version counters until a step
    here writes them again. Subclasses put this first in their bases, before the torch.optim class."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.copies: dict[torch.Tensor, WeightCopy] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [self._gather(group) for group in self.param_groups]
        if SGD_STEP.module is None or any(g is None for g in groups):
            self._widen_kept_grads()
            super().step()
            return loss
        for group, (params, grads) in zip(self.param_groups, groups):
            if params:
                self._step_group(group, params, grads)
        self._drop_kept_grads()
        return loss

    def _step_group(self, group: dict, params: list, grads: list) -> None:
        raise NotImplementedError

    def _kernel_takes(self, group: dict) -> bool:
        """Whether the group's options are the kernel's (beyond float32 dense CPU tensors)."""
        return not (group.get("differentiable") or group.get("capturable") or isinstance(group["lr"], torch.Tensor))

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._drop_kept_grads()

    def _drop_kept_grads(self) -> None:
        for copy in self.copies.values():
            copy.grad = None

    def _widen_kept_grads(self) -> None:
        """Put the gradients the copies hold into ``.grad`` as float32, for torch's own step."""
        for p in self.copies:
            g = self._grad_of(p)
            if g is not None:
                p.grad = g.float()
        self._drop_kept_grads()

    def _grad_of(self, p: torch.Tensor) -> torch.Tensor | None:
        copy = self.copies.get(p)
        if copy is not None and copy.grad is not None:
            return copy.grad if p.grad is None else p.grad + copy.grad.float()
        return p.grad

    def _gather(self, group: dict):
        """(params, grads) of the group that have gradients, or None where the kernel cannot take them."""
        if not self._kernel_takes(group):
            return None
        params, grads = [], []
        for p in group["params"]:
            g = self._grad_of(p)
            if g is None:
                continue
            if (g.is_sparse or p.dtype != torch.float32 or g.dtype not in (torch.float32, torch.bfloat16)
                    or p.device.type != "cpu"):
                return None
            if not p.is_contiguous() and not p.is_contiguous(memory_format=torch.channels_last):
                return None
            if g.stride() != p.stride():  # a gradient in another layout than its weight: copy it once
                g = torch.empty_like(p, dtype=g.dtype).copy_(g)
            params.append(p)
            grads.append(g)
        return params, grads

    def _state_tensor(self, p: torch.Tensor, key: str) -> tuple[torch.Tensor, bool]:
        """``state[p][key]`` in ``p``'s layout (zeros if absent; a resumed tensor in another layout
        is copied once), and whether it was absent."""
        state = self.state[p]
        value = state.get(key)
        if value is None or value.stride() != p.stride():
            new = torch.zeros_like(p) if value is None else torch.empty_like(p).copy_(value)
            state[key] = new
            return new, value is None
        return value, False

    def _copy_tensor(self, p: torch.Tensor) -> torch.Tensor | None:
        """The bf16 copy the step writes for ``p``, or None where ``p`` has none."""
        copy = self.copies.get(p)
        if copy is None:
            return None
        if copy.tensor is None or copy.tensor.stride() != p.stride():
            copy.tensor = torch.empty_like(p, dtype=torch.bfloat16)
        return copy.tensor

    def _written(self, params: list) -> None:
        """Record the weights' versions after the kernel wrote their copies."""
        for p in params:
            copy = self.copies.get(p)
            if copy is not None:
                copy.version = p._version


class SGDWithCopies(CopyingOptimizer, torch.optim.SGD):
    """``torch.optim.SGD`` with the one-pass step that writes bf16 weight copies (``CopyingOptimizer``);
    state ``momentum_buffer`` as torch's."""

    def _step_group(self, group: dict, params: list, grads: list) -> None:
        momentum = group["momentum"]
        for p, g in zip(params, grads):
            buf, first = self._state_tensor(p, "momentum_buffer") if momentum != 0 else (None, False)
            SGD_STEP.module.sgd_step(p, g, buf, first, self._copy_tensor(p), group["lr"], momentum, group["dampening"],
                                     group["weight_decay"], group["nesterov"], group["maximize"])
        self._written(params)


class AdamWithCopies(CopyingOptimizer, torch.optim.Adam):
    """``torch.optim.Adam`` (``decoupled_weight_decay=True``: AdamW) with the one-pass step that
    writes bf16 weight copies (``CopyingOptimizer``); state ``step``, ``exp_avg``, ``exp_avg_sq``
    as torch's. ``amsgrad`` runs torch's step."""

    def _kernel_takes(self, group: dict) -> bool:
        return super()._kernel_takes(group) and not group["amsgrad"] and not isinstance(group["betas"][0], torch.Tensor)

    def _step_group(self, group: dict, params: list, grads: list) -> None:
        beta1, beta2 = group["betas"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)  # torch's (non-capturable) step count
            exp_avg, _ = self._state_tensor(p, "exp_avg")
            exp_avg_sq, _ = self._state_tensor(p, "exp_avg_sq")
            state["step"] += 1
            SGD_STEP.module.adam_step(p, g, exp_avg, exp_avg_sq, self._copy_tensor(p), state["step"].item(),
                                      group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                                      group.get("decoupled_weight_decay", False), group["maximize"])
        self._written(params)


def attach_weight_copies(model: nn.Module, optimizer: torch.optim.Optimizer, bf16_grads: bool = False) -> int:
    """Give every plain ``nn.Conv2d``, ``GemmConv2d``, ``AmxConv2d`` and ``nn.Linear`` of ``model`` whose float32
    CPU weight ``optimizer`` (an ``SGDWithCopies`` or ``AdamWithCopies``) updates a bf16 copy, written by each step and
    read by the next forward pass. With ``bf16_grads`` their gradients stay bf16 on the copies for
    the step (see ``WeightCopy``): for runs where nothing else reads ``weight.grad`` between backward
    and step (no Keras L2, no clipping, no DDP). Returns how many layers were switched: 0 where the
    kernel cannot be built (``SGD_STEP.error`` says why)."""
    if not isinstance(optimizer, CopyingOptimizer):
        raise TypeError(f"attach_weight_copies needs an SGDWithCopies or AdamWithCopies optimiser, got {type(optimizer).__name__}")
    stepped = {p for group in optimizer.param_groups for p in group["params"]}
    layers = [m for m in model.modules() if type(m) in SWITCHES and m.weight in stepped
              and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]
    optimizer.copies = {}
    if not layers or SGD_STEP.load() is None:
        return 0
    copies = optimizer.copies

    def new_forward_pass(_module, _args) -> None:
        for copy in copies.values():
            copy.used = None

    model.register_forward_pre_hook(new_forward_pass)
    for layer in layers:
        layer.__class__ = SWITCHES[type(layer)]
        # a tied weight: one copy
        layer.weight_copy = optimizer.copies.setdefault(layer.weight, WeightCopy(holds_grad=bf16_grads))
    return len(layers)
