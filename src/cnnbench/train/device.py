"""Where and in what precision a run computes: device choice, autocast, grad scaler.

``resolve_device("auto")`` picks cuda, then mps, then cpu; a named device that is not there
is an error (no silent fallback). ``resolve_precision("auto", device)`` picks bf16 where the
hardware runs it fast — CUDA GPUs with bf16 support, and CPUs with bf16 matrix instructions
(AMX tiles, or AVX512-BF16 dot products) — and fp32 elsewhere.

Measured (ResNet-18 at 64 px, batch 128, the whole loop on the uint8 cache, ``cnnbench bench
--only peaks train``, README "Performance"):

- 2-core Xeon with AMX: fp32 124 img/s, bf16 199, bf16 + channels_last 294, against 114 for the
  plain fp32 ImageFolder loop;
- 2-core AMD EPYC (Zen 5: AVX512-BF16, no AMX), session 9: fp32 301 img/s, bf16 594, bf16 +
  channels_last 762, against 288 for the plain loop (5 rounds, medians). Before that run ``auto``
  chose fp32 there, on the guess that AVX512-BF16 alone gains little; it gains 2.5x.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from cnnbench.errors import CnnbenchError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda / mps / cpu (first available); cpu, cuda, cuda:N, mps are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnbenchError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CnnbenchError(f"train.device: {name!r} requested but no CUDA GPU is available (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CnnbenchError(f"train.device: {name!r} requested but only {torch.cuda.device_count()} GPU(s) present")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CnnbenchError(f"train.device: {name!r} requested but MPS is not available (use cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CnnbenchError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs whose oneDNN bf16 convolutions and matmuls beat fp32 by 2x or more: AMX bf16
    tiles, or AVX512-BF16 dot products (one instruction does twice an fp32 FMA's multiply-adds;
    see the module docstring for the measured rates)."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16", False) or capabilities.get("avx512_bf16", False))


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CPUs with AMX or AVX512-BF16 and on bf16-capable GPUs, else fp32; fp16 needs a CUDA GPU."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if precision not in PRECISIONS:
        raise CnnbenchError(f"train.precision: expected auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise CnnbenchError(f"train.precision: fp16 needs a CUDA GPU (its grad scaler); on {device.type} use bf16 or fp32")
    return precision


@dataclass
class Precision:
    """The resolved precision of a run: an autocast context and, for fp16, a grad scaler."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        """Autocast to bf16/fp16 on this device (BatchNorm and losses stay fp32), or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler enabled only for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")
