"""Two CPU processes with torchrun + gloo on loopback train one model together: they end with
identical weights, each read half of every batch, and (no BN, no dropout, no augmentation)
they match a single process taking the whole batch. With dropout and augmentation, each rank
draws its own streams, and a run interrupted on one rank and resumed equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.distributed.distributed_c10d import BackendConfig

from cnnbench.data import BatchPipeline
from cnnbench.train.checkpoint import load_checkpoint
from cnnbench.train.config import load_recipe
from cnnbench.train.device import Precision
from cnnbench.train.distributed import process_group_backend
from cnnbench.train.loop import evaluate
from cnnbench.train.run import train_run

from train_fixtures import TRAIN_PER_CLASS, VAL_PER_CLASS, tiny_recipe

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.parametrize("device, backend", [("cuda:1", "cpu:gloo,cuda:nccl"), ("cpu", "gloo")])
def test_the_process_group_carries_cpu_tensors_on_every_device(device, backend):
    # Step flags, metric sums and RNG-state gathers are CPU tensors even when training on GPUs;
    # plain "nccl" maps only cuda, and the first step would fail (no GPU here to show it live).
    chosen = process_group_backend(torch.device(device))
    assert chosen == backend
    devices = BackendConfig(chosen).get_device_backend_map()
    assert devices["cpu"] == "gloo"
    assert devices["cuda"] == ("nccl" if device.startswith("cuda") else "gloo")


def bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


def val_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(12) % 3


def evaluate_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo processes: evaluate this rank's half of val_batch() with a model whose BN
    statistics are this rank's own, as DDP leaves them (it broadcasts rank 0's buffers before
    each training forward, and each rank's forward then moves them with its own batch)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = bn_net()
        model[1].running_mean.fill_(float(rank))
        images, labels = val_batch()
        metrics = evaluate(model, [(images[rank::2], labels[rank::2])], BatchPipeline("none", channels_last=False),
                           Precision("fp32", torch.device("cpu")))
        torch.save(metrics, os.path.join(out_dir, f"eval{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_evaluate_with_rank_0s_bn_statistics(tmp_path):
    # Only rank 0's weights are checkpointed; the val metrics must be that model's, on every shard,
    # so that metrics.csv, the best.pt choice and `cnnbench evaluate` agree.
    torch.multiprocessing.spawn(evaluate_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    images, labels = val_batch()
    model = bn_net()
    model[1].running_mean.fill_(0.0)
    reference = evaluate(model, [(images, labels)], BatchPipeline("none", channels_last=False),
                         Precision("fp32", torch.device("cpu")))
    for rank in (0, 1):
        assert torch.load(tmp_path / f"eval{rank}.pt") == pytest.approx(reference), rank


@pytest.mark.slow
def test_two_gloo_processes_train_and_agree_and_resume_exactly(tiny_data, tmp_path):
    values = tiny_recipe(tiny_data, model={"name": "simple_cnn", "dropout": 0.0}, train={"epochs": 1})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(values))
    # Dropout and augmentation on: each rank's streams must be its own, and resume as its own.
    resume_file = tmp_path / "resume.yaml"
    resume_file.write_text(yaml.safe_dump(tiny_recipe(tiny_data, model={"name": "simple_cnn", "dropout": 0.3},
                                                      augment={"hflip": 0.5}, train={"epochs": 2})))
    # The single-process reference first: it also builds the dataset cache the ranks then share.
    train_run(load_recipe(recipe_file), tmp_path / "single", quiet=True)

    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(recipe_file), str(tmp_path / "ddp"), str(tmp_path), str(resume_file)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key  # DDP keeps the replicas identical
    assert [r["status"] for r in ranks] == ["finished", "finished"]
    assert [r["train_batches"] for r in ranks] == [4 * TRAIN_PER_CLASS // 16] * 2  # 8 images a rank, 6 steps
    assert [r["per_rank_batch"] for r in ranks] == [8, 8]

    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    for key, value in single["model"].items():
        torch.testing.assert_close(ranks[0]["model"][key], value, rtol=1e-4, atol=1e-5)

    # Only rank 0 wrote, and the val metrics cover every val image (the two shards summed).
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    reference = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert summary["val_top1"] == pytest.approx(reference["val_top1"], abs=1.0 / (4 * VAL_PER_CLASS))
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    # Each rank's global RNG is its own after the (identical) model init, and every rank's states
    # are in the checkpoint; rank 0 keeps a single process's streams.
    rng = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["rng"]
    assert len(rng["ranks"]["torch"]) == 2 and not torch.equal(rng["ranks"]["torch"][0], rng["ranks"]["torch"][1])
    assert torch.equal(rng["ranks"]["torch"][0], rng["torch"])
    assert torch.equal(rng["torch"], single["rng"]["torch"])

    # Interrupted on rank 1 mid-epoch and resumed: each rank restores its own streams, so the
    # weights equal the uninterrupted run's bit for bit.
    resumed = [torch.load(tmp_path / f"resume{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["status"] for r in resumed] == [["finished", "stopped", "finished"]] * 2
    last = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 2 * 4 * TRAIN_PER_CLASS // 16
    for r in resumed:
        for key, value in r["whole"].items():
            assert torch.equal(value, r["cut"][key]), key


def test_two_gloo_processes_train_in_bf16_with_weight_copies_and_agree(tiny_data, tmp_path):
    # bf16 SGD on the CPU runs SGDWithCopies; under DDP its weight gradients stay float32 in .grad,
    # where DDP's hooks all-reduce them, and the replicas stay identical.
    from cnnbench.train.weight_copies import SGD_STEP

    if SGD_STEP.load() is None:
        pytest.skip(f"no C++ toolchain: {SGD_STEP.error}")
    values = tiny_recipe(tiny_data, model={"name": "simple_cnn", "dropout": 0.0},
                         train={"epochs": 1, "precision": "bf16"})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(values))
    train_run(load_recipe(recipe_file), tmp_path / "single", quiet=True)  # also builds the shared cache
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(recipe_file), str(tmp_path / "ddp"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["finished", "finished"]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    fast = json.loads((tmp_path / "ddp" / "env.json").read_text())["fast_paths"]
    assert fast["weight_copies"] == 4 and "bf16_weight_grads" not in fast
    single = json.loads((tmp_path / "single" / "env.json").read_text())["fast_paths"]
    assert single["weight_copies"] == 4 and single["bf16_weight_grads"] is True
    reference = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    for key, value in reference["model"].items():  # bf16 forward passes: agree to bf16's precision
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["model"][key], value, rtol=2e-2, atol=2e-2)
