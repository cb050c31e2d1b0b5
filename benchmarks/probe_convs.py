"""Where ResNet-18's training step spends its time at 64 px, and what the matmul-convolutions change.

    python benchmarks/probe_convs.py [--repeats 5] [--batch 128]

Model-only (random inputs, no data loading), side by side in one process, medians:

1. per convolution shape of ResNet-18 at 64 px: forward + backward of torch's convolution
   (oneDNN) against ``cnnbench.train.gemm_conv.gemm_conv2d`` (the C++ im2col + matmul; on the
   2x2 map, the line below times the one-matmul ``CoveringConv`` that runs without the C++
   kernels), in bf16 autocast and fp32, channels_last, input gradient included — the table
   behind ``gemm_conv.AUTO_MAX_AREA``;
2. one SGD training step of the whole model, bf16 autocast + channels_last, with every
   convolution in torch (``train.conv_impl: torch``), with ``use_gemm_convs`` (``auto``), with
   those and the fused batch norms of ``cnnbench.train.fused_bn`` (``train.bn_impl: auto``) but
   the Python im2col and torch's max pool (session 9's default), with the C++ im2col and
   max pool of ``nhwc_ops.cpp`` too (``train.pool_impl: auto``), with the stem's batch norm,
   ReLU and max pool in one C++ call each way (``fused_bn.cpp``'s ``bn_relu_pool_*``), and, on
   CPUs with AMX-BF16, with the other convolutions' weight gradients from ``amx_conv.cpp`` and
   the matmul convolutions of layer3 and layer4 as its pixel-pair products, forward and backward
   (``train.conv_grad_impl: auto``; the default: what ``cnnbench train`` runs, but for the
   optimiser's bf16 weight copies, ``probe_weight_copies.py``);
3. where the default step's time goes: torch.profiler's self time per kind of operation
   beside torch's FLOP counter, against this machine's measured bf16 matmul peak, and the FLOP
   utilisation the step would reach if everything but its convolutions and matmuls took no
   time — the ceiling that faster elementwise code alone could reach.

The whole training loop with data loading is ``cnnbench bench --only train``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.bench.peaks import measure_matmul_peak, training_flops_per_image
from cnnbench.models import create_model
from cnnbench.train.amx_conv import load as load_amx
from cnnbench.train.amx_conv import load_error as amx_load_error
from cnnbench.train.amx_conv import AmxConv2d, use_amx_convs, window_forward_takes
from cnnbench.train.fused_bn import load_error, use_fused_batchnorm
from cnnbench.train.gemm_conv import (AUTO_MAX_AREA, GemmConv2d, covering_pairs, gemm_conv2d, pixel_pair_count,
                                      use_gemm_convs, use_pixel_pair_convs)
from cnnbench.train.max_pool import use_nhwc_max_pool
from cnnbench.train.native import NHWC_OPS

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


def conv_step(conv: nn.Conv2d, x: torch.Tensor, bf16: bool, gemm: bool, native: bool = True):
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = gemm_conv2d(x, conv.weight, None, conv.stride, conv.padding, native=native) if gemm else conv(x)
        y.float().sum().backward()
    return step


def model_step(batch: int, gemm: bool, fused_bn: bool = False, nhwc_ops: bool = False, optimizer=None,
               stem_pool: bool = True, amx: bool = False):
    """(model, step): ResNet-18 at 64 px with the chosen fast paths, and one bf16 + channels_last
    training step of it on a fixed random batch; ``optimizer(model)`` makes the optimiser (default:
    SGD, lr 0.01, momentum 0.9). With ``fused_bn`` and ``nhwc_ops`` the stem's batch norm takes its
    max pool over, as in the engine, unless ``stem_pool`` is False; ``amx`` switches the other
    convolutions to the AMX kernels (``train.conv_grad_impl: auto``). ``probe_weight_copies.py``
    builds its steps here too."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=200, input_size=64).to(memory_format=torch.channels_last)
    if gemm:
        use_gemm_convs(model, torch.zeros(1, 3, 64, 64), AUTO_MAX_AREA[torch.bfloat16])
        for conv in model.modules():
            if isinstance(conv, GemmConv2d):
                conv.native_im2col = nhwc_ops
    if amx and not use_amx_convs(model):
        raise SystemExit(f"the AMX weight gradients cannot run here: {amx_load_error()}")
    if amx and gemm:  # the matmul convolutions as pixel-pair products on the same tiles
        use_pixel_pair_convs(model)
    # the engine switches the pools first, so that the stem's batch norm can take its pool over
    switches = [(nhwc_ops, use_nhwc_max_pool, lambda: f"the NHWC kernels could not be built: {NHWC_OPS.error}"),
                (fused_bn, use_fused_batchnorm, lambda: f"the fused batch norm could not be built: {load_error()}")]
    for wanted, switch, failure in switches if stem_pool else switches[::-1]:
        if wanted and not switch(model):
            raise SystemExit(failure())
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (batch,))
    opt = optimizer(model) if optimizer is not None else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, step


AMX_KIND = "AMX convolutions (weight grad, stem)"  # AmxConv2d's weight gradients and the stem's forward pass
# torch.profiler op name -> kind of work (checked in order; the first match wins)
KINDS = [("pixel-pair convolutions (AMX)", ("PixelPairConv",)),
         (AMX_KIND, ("AmxConv",)), ("convolution (oneDNN)", ("convolution",)), ("matmul (incl. im2col convolutions)", ("aten::mm", "aten::addmm", "aten::bmm")),
         ("batch norm (+ ReLU, add, stem pool)", ("batch_norm", "BatchNormAct", "BatchNormReluPool")), ("pooling", ("pool", "MaxPool")), ("optimizer", ("_foreach", "Optimizer")),
         ("copies, elementwise, im2col", ("add", "relu", "clamp", "threshold", "copy", "cat", "fill", "mul", "zero", "Im2col",
                                          "slice", "to_copy", "empty", "view", "as_strided", "permute", "reshape"))]
FLOP_KINDS = {"convolution": "convolution (oneDNN)", "convolution_backward": "convolution (oneDNN)",
              "mm": "matmul (incl. im2col convolutions)", "addmm": "matmul (incl. im2col convolutions)",
              "bmm": "matmul (incl. im2col convolutions)"}
COMPUTE_KINDS = ("pixel-pair convolutions (AMX)", AMX_KIND, "convolution (oneDNN)", "matmul (incl. im2col convolutions)")


def kind_of(op: str) -> str:
    return next((kind for kind, keys in KINDS if any(k in op for k in keys)), "other")


def breakdown(model: nn.Module, step, batch: int, repeats: int, peak_gflops: float, model_gflop: float) -> None:
    """Print self time and FLOPs per kind of work for ``step`` (already warmed up).

    Rows count the FLOPs the kernels execute (torch's counter does not see the AMX kernels, so
    their rows count the weight gradients of the layers on oneDNN's forward as torch's counter
    would, 2 x N x Ho x Wo x O x C x k x k each, as much again for an image stem's forward pass
    (``window_forward``), and the pixel-pair convolutions' three passes as
    executed, 2 x N x pixel pairs x O x C each, which skips the padding taps); the whole-step line
    and the ceiling count the model's FLOPs, as every utilisation figure does."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    flops = collections.Counter()

    def amx_weight_grad(conv, _inputs, out) -> None:  # and an image stem's forward pass (window_forward)
        n, o, ho, wo = out.shape
        passes = 2 if window_forward_takes(conv.weight, conv.bias) else 1
        flops[AMX_KIND] += passes * 2 * n * ho * wo * o * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]

    def pixel_pair_conv(conv, inputs, out) -> None:  # forward, input and weight gradient: one product per pair
        n, c, h, w = inputs[0].shape
        pairs = pixel_pair_count(h, w, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        flops["pixel-pair convolutions (AMX)"] += 3 * 2 * n * pairs * out.shape[1] * c

    hooks = [m.register_forward_hook(amx_weight_grad) for m in model.modules() if isinstance(m, AmxConv2d)]
    hooks += [m.register_forward_hook(pixel_pair_conv) for m in model.modules() if getattr(m, "pixel_pairs", False)]
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        for hook in hooks:
            hook.remove()
    for op, n in counter.get_flop_counts()["Global"].items():
        flops[FLOP_KINDS.get(str(op).split(".")[-1], "other")] += n
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    ms = collections.Counter()
    for event in prof.key_averages():
        ms[kind_of(event.key)] += event.self_cpu_time_total / 1000 / repeats
    total_ms, total_gflop = sum(ms.values()), model_gflop
    print(f"\nwhere the default step's time goes (torch.profiler self time, {repeats} steps; bf16 matmul peak "
          f"{peak_gflops:.0f} GFLOP/s measured now):")
    print(f"{'kind of work':38} {'ms/step':>8} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>7}")
    for kind, t in ms.most_common():
        gflop = flops[kind] / 1e9
        rate = f"{gflop / t * 1000:8.0f} {100 * gflop / t * 1000 / peak_gflops:6.1f}%" if gflop else ""
        print(f"{kind:38} {t:8.1f} {100 * t / total_ms:5.1f}% {gflop:7.1f} {rate}")
    print(f"{'whole step (profiled; model FLOPs)':38} {total_ms:8.1f} {100.0:5.1f}% {total_gflop:7.1f} "
          f"{total_gflop / total_ms * 1000:8.0f} {100 * total_gflop / total_ms * 1000 / peak_gflops:6.1f}%")
    compute_ms = sum(ms[k] for k in COMPUTE_KINDS)
    print(f"utilisation ceiling with the convolutions and matmuls as they are and everything else free: "
          f"{100 * total_gflop / compute_ms * 1000 / peak_gflops:.1f}% of the bf16 peak "
          f"({batch / compute_ms * 1000:.0f} img/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=[2048, 4096],
                        help="square matmul sizes for the bf16 peak (the best median wins)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; ms forward + backward")
    print(f"{'conv (in -> out, map, kernel, stride)':40} {'oneDNN bf16':>12} {'matmul bf16':>12} "
          f"{'oneDNN fp32':>12} {'matmul fp32':>12}")
    for cin, cout, size, k, s, p in SHAPES:
        conv = nn.Conv2d(cin, cout, k, s, p, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, cin, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        cells = [median_ms(conv_step(conv, x, bf16, gemm), args.repeats) for bf16 in (True, False) for gemm in (False, True)]
        print(f"{f'{cin} -> {cout}, {size}x{size}, {k}x{k}, s{s}':40} " + " ".join(f"{c:12.1f}" for c in cells))
        if covering_pairs(size, size, (k, k), (s, s), (p, p)) is not None:  # the Python path's CoveringConv
            python = [median_ms(conv_step(conv, x, bf16, True, native=False), args.repeats) for bf16 in (True, False)]
            print(f"{'  (CoveringConv, without nhwc_ops.cpp)':40} {'':12} {python[0]:12.1f} {'':12} {python[1]:12.1f}")
    runs = {"torch convs + torch BN": model_step(args.batch, False),
            "matmul convs + torch BN": model_step(args.batch, True),
            "matmul convs (Python im2col) + fused BN": model_step(args.batch, True, fused_bn=True),
            "matmul convs + fused BN + C++ im2col and max pool": model_step(args.batch, True, fused_bn=True,
                                                                          nhwc_ops=True, stem_pool=False),
            "... + the stem's max pool inside its batch norm": model_step(args.batch, True, fused_bn=True,
                                                                        nhwc_ops=True)}
    if load_amx() is None:  # a CPU with AMX-BF16
        runs["... + AMX kernels"] = model_step(args.batch, True, fused_bn=True, nhwc_ops=True, amx=True)
    default = list(runs)[-1]  # what the engine runs here
    steps = {f"{name} (default)" if name == default else name: step for name, (_model, step) in runs.items()}
    for step in steps.values():
        step(), step()  # warm-up
    rates = {name: [] for name in steps}
    for _ in range(args.repeats):  # the three models take turns
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            rates[name].append(args.batch / (time.perf_counter() - start))
    for name, r in rates.items():
        print(f"ResNet-18 64 px training step, bf16 + channels_last, {name}: {statistics.median(r):.0f} img/s "
              f"[{min(r):.0f}-{max(r):.0f}]")
    peak = measure_matmul_peak("bf16", sizes=tuple(args.peak_sizes), repeats=args.repeats).gflops.median
    model_gflop = training_flops_per_image(create_model("resnet18", num_classes=200, input_size=64), 64) * args.batch / 1e9
    breakdown(*runs[default], args.batch, max(args.repeats, 2), peak, model_gflop)


if __name__ == "__main__":
    main()
