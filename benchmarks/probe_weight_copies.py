"""ResNet-18's bf16 training step with torch's SGD or Adam against the one-pass step that writes bf16 weight copies.

    python benchmarks/probe_weight_copies.py [--steps 3] [--rounds 9] [--batch 128]

Model only (random inputs, no data loading), bf16 autocast + channels_last at 64 px, with every
other CPU fast path of the engine (matmul convolutions, fused batch norm, NHWC max pool). Three
ways of doing the weights' part of a step take turns in each round:

- torch: ``torch.optim.SGD`` or ``Adam`` as ``create_optimizer`` makes it (torch's fused kernel
  where ``optim.fused: null`` picks it: SGD with Nesterov or weight decay, Adam), autocast casting each weight to bf16
  in the forward pass and autograd widening each weight gradient back to float32
  (``train.optim_impl: torch``);
- copies: ``SGDWithCopies`` or ``AdamWithCopies``, one C++ pass per tensor that also writes each conv/linear weight's
  bf16 copy, which the next forward pass reads instead of casting, gradients still widened to
  float32 (what runs with Keras L2, gradient clipping or DDP);
- copies + bf16 gradients: the same, the weight gradients kept in bf16 for the step (the
  engine's default for bf16 SGD on the CPU otherwise).

Images/s per step, medians over the rounds of ``--steps`` steps each, and each way's ratio to
torch's; then whether the three models hold the same weights after all those steps (they must
with plain momentum SGD, where torch runs its default, unfused loop; its fused kernels round in
another order, and torch's Adam takes its square roots through MKL, which rounds some otherwise). The whole training loop, data included, is ``cnnbench bench --only train --set
"variants=[bf16_cl_torch_optim, bf16_cl]"``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cnnbench.train.config import OptimConfig
from cnnbench.train.optim import create_optimizer
from cnnbench.train.weight_copies import SGD_STEP, attach_weight_copies

from probe_convs import model_step  # the script beside this one

WAYS = ("torch", "copies", "copies + bf16 gradients")
SETTINGS = {  # label -> OptimConfig options
    "SGD, momentum 0.9 (the bench's)": dict(momentum=0.9),
    "SGD, momentum 0.9, Nesterov, weight decay (the modern recipe's)": dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
    "Adam (reports 000 and 004)": dict(name="adam", lr=2e-4),
}


def build(way: str, options: dict, batch: int):
    """(model, step) for one way (probe_convs' ResNet-18 step with every fast path on)."""
    def make_optimizer(model):
        optimizer = create_optimizer(model, OptimConfig(**{"name": "sgd", "lr": 0.01, **options}),
                                     weight_copies=way != "torch")
        if way != "torch":
            attach_weight_copies(model, optimizer, bf16_grads=way == "copies + bf16 gradients")
        return optimizer
    return model_step(batch, True, fused_bn=True, nhwc_ops=True, optimizer=make_optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per way and round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    if SGD_STEP.load() is None:
        raise SystemExit(f"the one-pass optimiser step could not be built: {SGD_STEP.error}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-18 at 64 px, batch {args.batch}, "
          f"bf16 + channels_last; images/s, median of {args.rounds} rounds of {args.steps} steps [min-max]")
    print(f"{'optimiser':64} {'way':24} {'images/s':>18} {'x torch':>8}")
    for label, options in SETTINGS.items():
        built = {way: build(way, options, args.batch) for way in WAYS}
        for _, step in built.values():
            step(), step()  # oneDNN primitives, allocator growth, the first copies
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way, (_, step) in built.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[way].append(args.batch * args.steps / (time.perf_counter() - start))
        base = statistics.median(rates["torch"])
        for way in WAYS:
            r = rates[way]
            cell = f"{statistics.median(r):.0f} [{min(r):.0f}-{max(r):.0f}]"
            print(f"{label:64} {way:24} {cell:>18} {statistics.median(r) / base:7.2f}x")
        models = [model for model, _ in built.values()]
        same = all(torch.equal(p, q) for other in models[1:] for p, q in zip(models[0].parameters(), other.parameters()))
        print(f"{label:64} same weights after {2 + args.rounds * args.steps} steps: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
