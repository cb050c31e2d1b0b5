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
import yaml
from torch.distributed.distributed_c10d import BackendConfig

from cnnbench.train.checkpoint import load_checkpoint
from cnnbench.train.config import load_recipe
from cnnbench.train.distributed import process_group_backend
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
