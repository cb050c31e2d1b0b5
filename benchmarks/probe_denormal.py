"""The optimiser step over subnormal floats, with and without flushing them to zero.

    python benchmarks/probe_denormal.py [--repeats 7] [--rounds 3] [--model deepl18_e]

Report 000's model E (42.7 M parameters, the engine's fused Adam, Keras L2 1e-3) slowed from 89-95
s/epoch (epochs 1-3) to 141-145 (epochs 6-7) on train80: its checkpoint then held 8.9 M subnormal
Adam first moments (the moments of weights whose gradient stays zero decay by beta1 per step)
and 8.5 M subnormal weights (shrunk by the L2). x86 CPUs take a slow path for each arithmetic
operation on a subnormal input or result. Training on the CPU now flushes them to zero on every
thread of torch's pool (``cnnbench.train.native.flush_denormals``, FTZ + DAZ);
``torch.set_flush_denormal`` alone sets the calling thread only.

This probe puts a model's Adam state in that shape — half of every weight tensor and of its
first moments subnormal (1e-40), the gradients of that half zero — and times ``optimizer.step()``
with flushing off, with ``torch.set_flush_denormal(True)`` and with ``flush_denormals(True)``,
taking turns within each round; each timed step starts from the same state. A second row times
the same step with no subnormal values: flushing costs nothing there. ms per step, medians of
the rounds' medians.

A second table times one forward pass (inference, as ``evaluate`` and ``predict`` run it, which
flush too) of a batch of random 64 px images, channels_last, with a fifth of every weight
tensor's values subnormal (chosen at random) — a checkpoint saved before training flushed, or
by another tool — in fp32 and in bf16 autocast, with flushing off and with
``flush_denormals(True)``; and in fp32 with no subnormal weights.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from cnnbench.models import create_model
from cnnbench.train.config import OptimConfig
from cnnbench.train.native import flush_denormals
from cnnbench.train.optim import create_optimizer

SUBNORMAL = 1e-40  # below float32's smallest normal, 1.18e-38


def prepared_step(model: torch.nn.Module, subnormal: bool):
    """An optimiser with its state set up, and a function that restores that state and returns the
    seconds one ``step()`` from it takes."""
    optimizer = create_optimizer(model, OptimConfig(name="adam", lr=1e-3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # creates the state (exp_avg, exp_avg_sq, step)
    for p in model.parameters():
        if subnormal:
            half = p.numel() // 2
            p.grad.view(-1)[half:] = 0.0
            with torch.no_grad():
                p.view(-1)[half:] = SUBNORMAL
            optimizer.state[p]["exp_avg"].view(-1)[half:] = SUBNORMAL
    saved = [(t, t.clone()) for p in model.parameters()
             for t in (p.data, optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"])]

    def step() -> float:
        for live, copy in saved:
            live.copy_(copy)  # a copy is not arithmetic: the subnormal values survive it either way
        start = time.perf_counter()
        optimizer.step()
        return time.perf_counter() - start

    return step


def prepared_forward(model: torch.nn.Module, subnormal: bool, bf16: bool, batch: int):
    """A function that returns the seconds one inference forward pass of ``model`` (a copy with a
    fifth of each weight tensor's values subnormal, when ``subnormal``) over ``batch`` images takes."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    if subnormal:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                chosen = torch.rand(p.shape, generator=generator) < 0.2
                p[chosen] = SUBNORMAL
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
        return time.perf_counter() - start

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="deepl18_e")
    parser.add_argument("--batch", type=int, default=32, help="images per inference forward pass")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=200, input_size=64)
    count = sum(p.numel() for p in model.parameters())
    initial = copy.deepcopy(model)  # the inference table's weights: as created, before the optimiser section steps them
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, {count / 1e6:.1f}M parameters, "
          f"fused Adam; ms per optimizer.step(), median of {args.rounds} alternating rounds of {args.repeats}")
    print(f"{'state':16} {'off':>8} {'torch':>8} {'cnnbench':>9} {'off / cnnbench':>15}")
    def off() -> None:
        flush_denormals(False)
        torch.set_flush_denormal(False)

    modes = {  # label -> switch
        "off": off,
        "torch": lambda: torch.set_flush_denormal(True),                 # the calling thread only
        "cnnbench": lambda: flush_denormals(True),                       # every thread of the pool
    }
    try:
        for label, subnormal in (("half subnormal", True), ("no subnormals", False)):
            off()  # under FTZ, writing 1e-40 into a float32 tensor writes 0
            step = prepared_step(model, subnormal)
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode, switch in modes.items():
                    off()
                    switch()
                    step()  # warm-up
                    times[mode].append(1000 * statistics.median(step() for _ in range(args.repeats)))
            ms = {mode: statistics.median(t) for mode, t in times.items()}
            print(f"{label:16} {ms['off']:8.1f} {ms['torch']:8.1f} {ms['cnnbench']:9.1f} {ms['off'] / ms['cnnbench']:14.2f}x")
        print(f"\nms per inference forward pass of {args.batch} images, median of {args.rounds} alternating rounds "
              f"of {args.repeats}")
        print(f"{'weights':32} {'off':>8} {'cnnbench':>9} {'off / cnnbench':>15}")
        for label, subnormal, bf16 in (("fp32, a fifth subnormal", True, False), ("bf16 autocast, a fifth subnormal", True, True),
                                       ("fp32, no subnormals", False, False)):
            off()
            forward = prepared_forward(initial, subnormal, bf16, args.batch)
            times = {"off": [], "cnnbench": []}
            for _ in range(args.rounds):
                for mode in times:
                    off()
                    modes[mode]()
                    forward()  # warm-up
                    times[mode].append(1000 * statistics.median(forward() for _ in range(args.repeats)))
            ms = {mode: statistics.median(t) for mode, t in times.items()}
            print(f"{label:32} {ms['off']:8.1f} {ms['cnnbench']:9.1f} {ms['off'] / ms['cnnbench']:14.2f}x")
    finally:
        off()


if __name__ == "__main__":
    main()
