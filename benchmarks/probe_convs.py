"""Where ResNet-18's training step spends its time at 64 px, and what the matmul-convolutions change.

    python benchmarks/probe_convs.py [--repeats 5] [--batch 128]

Model-only (random inputs, no data loading), side by side in one process, medians:

1. per convolution shape of ResNet-18 at 64 px: forward + backward of torch's convolution
   (oneDNN) against ``cnnbench.train.gemm_conv.gemm_conv2d`` (im2col + matmul), in bf16
   autocast and fp32, channels_last, input gradient included — the table behind
   ``gemm_conv.AUTO_MAX_AREA``;
2. one SGD training step of the whole model, bf16 autocast + channels_last, with every
   convolution in torch (``train.conv_impl: torch``) and with ``use_gemm_convs`` (``auto``).

The whole training loop with data loading is ``cnnbench bench --only train``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models import create_model
from cnnbench.train.gemm_conv import AUTO_MAX_AREA, gemm_conv2d, use_gemm_convs

# (in, out, input map, kernel, stride, padding): every convolution shape of ResNet-18 at 64 px
SHAPES = [(64, 64, 16, 3, 1, 1), (64, 128, 16, 3, 2, 1), (128, 128, 8, 3, 1, 1), (128, 256, 8, 3, 2, 1),
          (256, 256, 4, 3, 1, 1), (256, 512, 4, 3, 2, 1), (512, 512, 2, 3, 1, 1), (256, 512, 4, 1, 2, 0)]


def median_ms(fn, repeats: int) -> float:
    fn(), fn()  # oneDNN primitive creation, allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def conv_step(conv: nn.Conv2d, x: torch.Tensor, bf16: bool, gemm: bool):
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = gemm_conv2d(x, conv.weight, None, conv.stride, conv.padding) if gemm else conv(x)
        y.float().sum().backward()
    return step


def model_step(batch: int, gemm: bool):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=200, input_size=64).to(memory_format=torch.channels_last)
    if gemm:
        use_gemm_convs(model, torch.zeros(1, 3, 64, 64), AUTO_MAX_AREA[torch.bfloat16])
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; ms forward + backward")
    print(f"{'conv (in -> out, map, kernel, stride)':40} {'oneDNN bf16':>12} {'matmul bf16':>12} "
          f"{'oneDNN fp32':>12} {'matmul fp32':>12}")
    for cin, cout, size, k, s, p in SHAPES:
        conv = nn.Conv2d(cin, cout, k, s, p, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, cin, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        cells = [median_ms(conv_step(conv, x, bf16, gemm), args.repeats) for bf16 in (True, False) for gemm in (False, True)]
        print(f"{f'{cin} -> {cout}, {size}x{size}, {k}x{k}, s{s}':40} " + " ".join(f"{c:12.1f}" for c in cells))
    steps = {"conv_impl torch": model_step(args.batch, False), "conv_impl auto": model_step(args.batch, True)}
    for step in steps.values():
        step(), step()  # warm-up
    rates = {name: [] for name in steps}
    for _ in range(args.repeats):  # the two models take turns
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            rates[name].append(args.batch / (time.perf_counter() - start))
    for name, r in rates.items():
        print(f"ResNet-18 64 px training step, bf16 + channels_last, {name}: {statistics.median(r):.0f} img/s "
              f"[{min(r):.0f}-{max(r):.0f}]")


if __name__ == "__main__":
    main()
