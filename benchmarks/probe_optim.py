"""One optimiser step over ResNet-18's parameters: torch's default path against its fused kernel.

    python benchmarks/probe_optim.py [--repeats 11] [--rounds 3] [--model resnet18]

The gradients come from one real bf16 + channels_last backward at 64 px, batch 32 (their layouts
are the training step's). For each optimiser setting, ``step()`` is timed on the default path
(on the CPU torch's single-tensor loop, on CUDA its foreach path) and with ``fused=True``, in
alternating rounds; medians of medians. The table is the measurement behind
``cnnbench.train.optim.use_fused``'s rule for ``optim.fused: null``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from cnnbench.bench.stats import time_runs
from cnnbench.models import create_model

SETTINGS = {  # label -> (torch.optim class, options)
    "SGD, momentum 0.9": (torch.optim.SGD, dict(momentum=0.9)),
    "SGD, momentum 0.9, Nesterov": (torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
    "SGD, momentum 0.9, weight decay": (torch.optim.SGD, dict(momentum=0.9, weight_decay=5e-4)),
    "SGD, momentum 0.9, Nesterov, weight decay": (torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=5e-4)),
    "SGD, no momentum": (torch.optim.SGD, dict(momentum=0.0)),
    "Adam": (torch.optim.Adam, {}),
    "AdamW": (torch.optim.AdamW, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=200, input_size=64).to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x).float(), torch.randint(0, 200, (32,)))
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    count = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}: {count / 1e6:.1f} M parameters; "
          f"ms per step(), median of {args.rounds} alternating rounds of {args.repeats}")
    print(f"{'optimiser':44} {'default':>8} {'fused':>8} {'ratio':>6}")
    for label, (cls, options) in SETTINGS.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for fused in (False, True):  # a tiny rate: the weights stay where they are
                optimizer = cls(params, lr=1e-9, **options, **({"fused": True} if fused else {}))
                times[fused].append(1000 * time_runs(optimizer.step, args.repeats, warmup=2).median)
        default, fused = statistics.median(times[False]), statistics.median(times[True])
        print(f"{label:44} {default:8.2f} {fused:8.2f} {default / fused:5.2f}x")


if __name__ == "__main__":
    main()
