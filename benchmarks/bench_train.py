"""Training throughput of cnnbench's loop vs a plain PyTorch loop, side by side in one process.

    python benchmarks/bench_train.py [--data ../shared/datasets] [--rounds 3] [--steps 6] [--batch 128]

ResNet-18 (torchvision's native stem) at 64 px on the Tiny ImageNet train80 images, batch 128,
SGD with momentum, no augmentation in either loop:

- baseline: torchvision ``ImageFolder`` + PIL + ``ToTensor``/``Normalize`` + ``DataLoader(num_workers=2)``,
  fp32, NCHW — the way the reports trained;
- cnnbench: the real ``train_one_epoch`` of ``cnnbench.train.loop`` on the uint8 cache
  (``BatchLoader`` -> ``BatchPipeline``), with its fast-path defaults (bf16 autocast on AMX CPUs,
  channels_last), and the same loop with those switched off one at a time to show each gain.

Rounds alternate between the variants so machine noise hits all of them alike; each figure is
the median over rounds of images/s over ``--steps`` timed steps (after warm-up steps). FLOP
utilisation = images/s x training FLOPs per image (torch's flop counter, forward + backward)
/ this machine's measured matmul peak (the best median of square matmuls, measured here).
Peak RSS is measured in a child process that only runs cnnbench's loop at batch 128.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- peaks
def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048), repeats=5) -> float:
    """Best (over sizes) median GFLOP/s of an n x n matmul."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n ** 3 / statistics.median(times) / 1e9)
    return best


# --------------------------------------------------------------------------- the two loops
def resnet18(num_classes: int = 200):
    from cnnbench.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18", num_classes=num_classes, input_size=64, stem="imagenet")


def baseline_rates(train_dir: Path, batch: int, steps: int, warmup: int, rounds: int):
    """Generator: one images/s figure per round for the plain ImageFolder + DataLoader loop."""
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.ImageFolder(str(train_dir), transform=transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.48, 0.45, 0.40), (0.27, 0.26, 0.28))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)
    model = resnet18()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = iter(loader)
    for _ in range(rounds):
        model.train()
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        yield batch * steps / (time.perf_counter() - start)


def cnnbench_rates(ds, batch: int, steps: int, warmup: int, rounds: int, precision: str, channels_last: bool,
                   compile_model: bool = False):
    """Generator: one images/s figure per round for cnnbench's own train_one_epoch."""
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.loop import Progress, train_one_epoch
    from cnnbench.train.run import build_engine

    recipe = load_recipe(values={
        "data": {"normalize": "standardize", "input_size": 64}, "model": {"name": "resnet18", "options": {"stem": "imagenet"}},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"batch_size": batch, "precision": precision, "channels_last": channels_last, "compile": compile_model,
                  "epochs": 1000}})
    engine = build_engine(recipe, ds, resnet18(), torch.device("cpu"), Precision(precision, torch.device("cpu")), Ranks())
    progress = Progress()
    for _ in range(rounds):
        stamps = []

        def after_step(engine, progress):
            stamps.append(time.perf_counter())
            if len(stamps) == warmup + steps + 1:
                stop.request()

        from cnnbench.train.distributed import StopRequest
        stop = StopRequest()
        if engine.train_stream.position + warmup + steps + 1 > len(engine.train_stream):
            progress.epoch, engine.train_stream.position = progress.epoch + 1, 0
        train_one_epoch(engine, progress, stop, show=False, after_step=after_step)
        yield batch * steps / (stamps[warmup + steps] - stamps[warmup])


# --------------------------------------------------------------------------- memory probe
def rss_probe(data: str, batch: int, steps: int) -> None:
    """Child process: train ``steps`` steps with cnnbench's loop, print peak RSS in MB."""
    from cnnbench.data import load_dataset

    ds = load_dataset("tiny-imagenet", data=data)
    for _ in cnnbench_rates(ds, batch, steps, 1, 1, "bf16", True):
        pass
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def extract_train(archive: Path, into: Path) -> Path:
    """The train/ tree of the archive as files (what ImageFolder reads); members are checked to
    stay inside ``into``."""
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            if "/train/" in member and member.endswith(".JPEG"):
                target = (into / member).resolve()
                if not str(target).startswith(str(into.resolve())):
                    raise SystemExit(f"{archive}: member {member} escapes the extraction folder")
                z.extract(member, into)
    return into / "tiny-imagenet-200" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("CNNBENCH_DATA", str(REPO.parent / "shared" / "datasets")))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for every variant (0: torch's default); 1 on a machine shared with "
                             "other jobs, where two threads mostly wait for each other")
    parser.add_argument("--rss-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    archive = Path(args.data) / "tiny-imagenet-200-train80.zip"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe:
        return rss_probe(str(archive), args.batch, 20)

    from cnnbench.data import load_dataset
    from cnnbench.models import build_on_meta, training_flops
    from cnnbench.train.device import cpu_has_fast_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, AMX bf16: {cpu_has_fast_bf16()}")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"measured matmul peaks: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    flops = training_flops(build_on_meta("resnet18", num_classes=200, input_size=64, stem="imagenet"), 64, 3)
    print(f"ResNet-18 at 64 px: {flops / 1e9:.3f} GFLOP per training image (forward + backward)")

    ds = load_dataset("tiny-imagenet", data=str(archive))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as workdir:
        rates = time_variants(ds, extract_train(archive, Path(workdir)), args)
    report(rates, flops, peaks, args)


def time_variants(ds, train_dir: Path, args) -> dict[str, list[float]]:
    """images/s per round for every variant, rounds interleaved across variants."""
    variants = {
        "baseline (ImageFolder+PIL+DataLoader(2), fp32, NCHW)": baseline_rates(train_dir, args.batch, args.steps, args.warmup, args.rounds),
        "cnnbench fp32 NCHW (uint8 cache only)": cnnbench_rates(ds, args.batch, args.steps, args.warmup, args.rounds, "fp32", False),
        "cnnbench fp32 channels_last": cnnbench_rates(ds, args.batch, args.steps, args.warmup, args.rounds, "fp32", True),
        "cnnbench bf16 channels_last (default)": cnnbench_rates(ds, args.batch, args.steps, args.warmup, args.rounds, "bf16", True),
    }
    if args.compile:
        variants["cnnbench bf16 channels_last + torch.compile"] = cnnbench_rates(
            ds, args.batch, args.steps, args.warmup, args.rounds, "bf16", True, compile_model=True)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleave: one round of every variant, then the next
        for name, gen in variants.items():
            rates[name].append(next(gen))
    return rates


def report(rates: dict[str, list[float]], flops: int, peaks: dict[str, float], args) -> None:
    """Print the table (ratios to the baseline, FLOP utilisation) and the peak-RSS probe."""
    base = statistics.median(rates[next(iter(rates))])
    print(f"\nbatch {args.batch}, {args.steps} timed steps x {args.rounds} rounds (median, [min-max])")
    print(f"{'variant':58s} {'img/s':>16s} {'x baseline':>10s} {'MFU fp32':>9s} {'MFU bf16':>9s}")
    for name, values in rates.items():
        med = statistics.median(values)
        achieved = med * flops / 1e9
        print(f"{name:58s} {med:7.1f} [{min(values):.0f}-{max(values):.0f}] {med / base:9.2f}x "
              f"{achieved / peaks['fp32']:8.1%} {achieved / peaks['bf16']:8.1%}")
    probe = subprocess.run([sys.executable, __file__, "--rss-probe", "--data", args.data, "--batch", "128",
                            "--threads", str(args.threads)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"RSS probe failed:\n{probe.stderr[-2000:]}")
    rss = json.loads(probe.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    print(f"\npeak RSS, cnnbench loop, ResNet-18 batch 128 on the train80 cache: {rss:.0f} MB (target < 3072 MB)")


if __name__ == "__main__":
    main()
