"""This machine's measured matrix-multiply peaks, the denominators of FLOP utilisation.

A datasheet peak is not what PyTorch can reach on a shared 2-core VM, so the peak is
measured: square matrix products of a few sizes, each timed several times; the peak for a dtype
is the best (kernel, size) median GFLOP/s. ANCHORS.md measured ~246 GFLOP/s fp32 and
~1,450-1,650 GFLOP/s bf16 (AMX) on an idle machine of this kind.

Two kernels compute each product on the CPU: ``torch.mm`` and the same GEMM as a 1x1
convolution ((1, n, n, 1) channels_last input, (n, n, 1, 1) weight), which runs oneDNN's JIT
kernel. They differ by vendor: on the session-9 AMD EPYC (Zen 5) fp32 ``torch.mm`` (MKL) read
203-218 GFLOP/s and the 1x1 convolution 425-455, so with ``torch.mm`` alone the plain fp32
training loop, whose convolutions run in oneDNN, showed 114% of the "peak"; in bf16 both go
through oneDNN (mm 938-988, convolution 879-909). The faster of the two is the machine's peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnbench.bench.stats import Stats, time_runs

DTYPES = ("fp32", "bf16")
KERNELS = ("mm", "conv1x1")


@dataclass(frozen=True)
class MatmulPeak:
    """The best median matmul rate for one dtype on one device."""

    dtype: str
    device: str
    size: int
    """The square size n (n x n @ n x n) that gave the best median."""
    gflops: Stats
    """GFLOP/s over the timed runs at that size."""
    kernel: str = "mm"
    """What computed it: ``mm`` (torch.mm) or ``conv1x1`` (the same GEMM as a 1x1 convolution)."""

    def row(self) -> dict:
        return {"name": f"matmul {self.dtype}", "dtype": self.dtype, "device": self.device,
                "kernel": self.kernel, "size": self.size, "gflops": self.gflops.to_dict()}


def measure_matmul_peak(dtype: str, device: str = "cpu", sizes: tuple[int, ...] = (1024, 2048, 4096),
                        repeats: int = 5) -> MatmulPeak:
    """Measure ``dtype`` (fp32 or bf16) GEMM GFLOP/s on ``device``; the best (kernel, size) wins:
    ``torch.mm`` everywhere, and on the CPU also the 1x1 convolution (module docstring)."""
    best = None
    for n in sizes:
        for kernel in KERNELS if str(device) == "cpu" else ("mm",):
            multiply = _product(kernel, dtype, device, n)
            seconds = time_runs(multiply, repeats=repeats, warmup=2)
            gflops = seconds.inverted(2 * n**3 / 1e9, "GFLOP/s")
            if best is None or gflops.median > best.gflops.median:
                best = MatmulPeak(dtype, str(device), n, gflops, kernel)
    return best


def _product(kernel: str, dtype: str, device: str, n: int):
    """A function computing one n x n @ n x n product of random ``dtype`` operands with ``kernel``."""
    import torch
    import torch.nn.functional as F

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    synchronize = _synchronizer(device)
    if kernel == "mm":
        a = torch.randn(n, n, device=device).to(torch_dtype)
        b = torch.randn(n, n, device=device).to(torch_dtype)

        def multiply() -> None:
            torch.mm(a, b)
            synchronize()
    elif kernel == "conv1x1":  # (n pixels, n channels) @ (n channels, n filters), in oneDNN
        x = torch.randn(1, n, n, 1, device=device).to(torch_dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1, device=device).to(torch_dtype).contiguous(memory_format=torch.channels_last)

        def multiply() -> None:
            F.conv2d(x, w)
            synchronize()
    else:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    return multiply


def matmul_probe(peaks: dict[str, MatmulPeak], repeats: int = 3):
    """A function returning {dtype: GFLOP/s now} for each of ``peaks`` at its best kernel and size.

    A shared VM's matmul rate moves by 2x and more within minutes (scratch runs here: the bf16
    peak at n=2048 read 1,244 then 579-656 GFLOP/s a minute later, the machine otherwise idle),
    so a utilisation figure divides a training rate by a peak measured beside it, in the same
    round of turns, not by one taken minutes earlier."""
    products = {dtype: (peak.size, _product(peak.kernel, dtype, peak.device, peak.size)) for dtype, peak in peaks.items()}

    def probe() -> dict[str, float]:
        rates = {}
        for dtype, (n, multiply) in products.items():
            seconds = time_runs(multiply, repeats=repeats, warmup=1)
            rates[dtype] = seconds.inverted(2 * n**3 / 1e9, "GFLOP/s").median
        return rates

    return probe


def _synchronizer(device: str):
    """A function that waits for queued device work (a no-op on the CPU)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def training_flops_per_image(model, input_size: int, in_channels: int = 3, batch: int = 2) -> float:
    """FLOPs of one training image (forward + backward) counted by ``torch.utils.flop_counter``.

    The counter sees the convolutions and matmuls of the backward pass as well, so this is
    the ~3x-forward figure that training throughput is measured against (ANCHORS.md: 0.87
    GFLOP per ResNet-18 training image at 64 px).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train()
    x = torch.randn(batch, in_channels, input_size, input_size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / batch


def utilisation(images_per_s: float, flops_per_image: float, peak_gflops: float) -> float:
    """Model FLOP utilisation: achieved training FLOP/s over a measured peak (a fraction)."""
    return images_per_s * flops_per_image / (peak_gflops * 1e9)
