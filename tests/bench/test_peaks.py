"""measure_matmul_peak: the machine's GEMM peak is the faster of torch.mm and the same product as a 1x1 convolution."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnbench.bench import peaks
from cnnbench.bench.stats import Stats


@pytest.mark.parametrize("kernel", peaks.KERNELS)
def test_each_kernel_computes_one_n_cubed_product(kernel):
    multiply = peaks._product(kernel, "fp32", "cpu", 32)
    with FlopCounterMode(display=False) as counter:
        multiply()
    assert counter.get_total_flops() == 2 * 32**3  # the GFLOP/s figure divides exactly this


def test_the_faster_kernel_is_the_peak_and_the_probe_reuses_it(monkeypatch):
    # on the session-9 AMD EPYC fp32 torch.mm (MKL) ran at half the 1x1 convolution's (oneDNN's) rate
    seconds = {"mm": 2.0, "conv1x1": 1.0}
    made = []

    def product(kernel, dtype, device, n):
        made.append((kernel, n))
        return lambda: kernel

    monkeypatch.setattr(peaks, "_product", product)
    monkeypatch.setattr(peaks, "time_runs", lambda fn, repeats, warmup=1: Stats.of([seconds[fn()] * n_cubed(made[-1][1])]))
    best = peaks.measure_matmul_peak("fp32", sizes=(16, 32), repeats=1)
    assert made == [("mm", 16), ("conv1x1", 16), ("mm", 32), ("conv1x1", 32)]
    assert (best.kernel, best.gflops.median) == ("conv1x1", pytest.approx(1.0))
    assert best.row()["name"] == "matmul fp32" and best.row()["kernel"] == "conv1x1"
    seconds["conv1x1"] = 4.0
    assert peaks.measure_matmul_peak("fp32", sizes=(16,), repeats=1).kernel == "mm"
    made.clear()
    peaks.matmul_probe({"fp32": best})
    assert made == [("conv1x1", best.size)]  # the per-round probe times the kernel that won
    assert peaks.measure_matmul_peak("fp32", device="meta", sizes=(16,), repeats=1).kernel == "mm"  # not a CPU: mm only


def n_cubed(n: int) -> float:
    return 2 * n**3 / 1e9  # so that seconds * this gives GFLOP/s = 1 / seconds
