"""One training step with Keras' L2 penalty: in autograd's graph against the engine's direct gradient.

    python benchmarks/probe_l2.py [--repeats 7] [--rounds 3]

Report 000's model E (Adam, L2 1e-3 on its marked layers, batch 32) and report 002's simple CNN
(SGD, L2 5e-4 on every layer, batch 100) at 64 px, bf16 + channels_last, with the engine's
optimiser (``create_optimizer``: fused Adam). A step is forward, cross-entropy plus the
penalty, backward and ``step()``:

- graph: the penalty ``l2 * sum(w.pow(2).sum())`` is part of the loss, and autograd computes
  and accumulates its gradient (what ``KerasL2`` did before);
- direct: ``KerasL2.value()`` adds the penalty to the loss as a number and ``add_grad()`` adds
  ``2 * l2 * w`` to the gradients after backward (what the training loop does now).

Both ways alternate within each round; ms per step, medians of the rounds' medians. That the
two give the same gradients is tested in ``tests/train/test_optim_schedule.py``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from cnnbench.bench.stats import time_runs
from cnnbench.models import create_model
from cnnbench.train.config import OptimConfig
from cnnbench.train.optim import KerasL2, create_optimizer, resolve_l2_layers

CASES = {  # label -> (model, batch, optimiser config)
    "report 000 model E (Adam, L2 1e-3)": ("deepl18_e", 32, OptimConfig(name="adam", lr=1e-9, l2=1e-3)),
    "report 002 simple CNN (SGD, L2 5e-4)": ("simple_cnn", 100, OptimConfig(name="sgd", lr=1e-9, momentum=0.0, l2=5e-4)),
}


def make_steps(model, penalty: KerasL2, optimizer, batch: int):
    """The two ways of one training step over a fixed batch (a tiny rate keeps the weights put)."""
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (batch,))

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(model(x).float(), y)

    def graph():
        optimizer.zero_grad(set_to_none=True)
        loss = forward() + penalty.l2 * sum(w.pow(2).sum() for w in penalty.weights)
        loss.backward()
        optimizer.step()

    def direct():
        optimizer.zero_grad(set_to_none=True)
        loss = forward() + penalty.value()
        loss.backward()
        penalty.add_grad()
        optimizer.step()

    return {"graph": graph, "direct": direct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per training step, median of "
          f"{args.rounds} alternating rounds of {args.repeats}")
    print(f"{'model':38} {'L2 weights':>10} {'graph':>8} {'direct':>8} {'ratio':>6}")
    for label, (name, batch, cfg) in CASES.items():
        torch.manual_seed(0)
        model = create_model(name, num_classes=200, input_size=64).to(memory_format=torch.channels_last)
        penalty = KerasL2(model, cfg.l2, resolve_l2_layers(model, None))
        steps = make_steps(model, penalty, create_optimizer(model, cfg), batch)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for way, step in steps.items():
                times[way].append(1000 * time_runs(step, args.repeats, warmup=2).median)
        graph, direct = statistics.median(times["graph"]), statistics.median(times["direct"])
        count = sum(w.numel() for w in penalty.weights)
        print(f"{label:38} {count / 1e6:9.1f}M {graph:8.1f} {direct:8.1f} {graph / direct:5.2f}x")


if __name__ == "__main__":
    main()
