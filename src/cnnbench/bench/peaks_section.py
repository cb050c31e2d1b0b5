"""Section ``peaks``: the fp32 and bf16 matmul peaks every utilisation figure is divided by."""

from __future__ import annotations

from cnnbench.bench.peaks import DTYPES
from cnnbench.bench.results import SectionResult
from cnnbench.bench.suite import BenchContext, register_section


@register_section("peaks")
def peaks_section(ctx: BenchContext) -> SectionResult:
    """Measure (or reuse) the matmul peak of each dtype."""
    rows = [ctx.measured_peak(dtype).row() for dtype in DTYPES]
    return SectionResult(
        title="Matrix-multiply peaks (GFLOP/s, median [min-max])",
        rows=rows,
        columns=[("name", "peak"), ("kernel", "kernel"), ("size", "n"), ("gflops", "GFLOP/s")],
        notes=["n x n @ n x n products by torch.mm and, on the CPU, by a 1x1 convolution (oneDNN; MKL's torch.mm "
               "is half as fast in fp32 on AMD CPUs); the best (kernel, size) median is the peak used for utilisation."],
    )
