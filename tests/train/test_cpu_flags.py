"""Subnormal floats flushed to zero on every thread of torch's CPU pool while a run trains."""

from __future__ import annotations

import platform

import pytest
import torch
import yaml

from cnnbench.train.config import load_recipe
from cnnbench.train import native
from cnnbench.train.native import CPU_FLAGS, denormals_flushed, flush_denormals
from cnnbench.train.run import train_run
from train_fixtures import tiny_recipe

SUBNORMAL = 1e-40  # below float32's smallest normal, 1.18e-38

pytestmark = pytest.mark.skipif(CPU_FLAGS.load() is None, reason=f"no C++ toolchain: {CPU_FLAGS.error}")


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    flush_denormals(False)
    torch.set_num_threads(threads)


def subnormals() -> torch.Tensor:
    """A tensor big enough that an elementwise op splits it over the pool's threads (grain 32768)."""
    x = torch.full((1 << 20,), SUBNORMAL)
    assert (x > 0).all()  # made while flushing is off
    return x


def test_flush_reaches_every_thread_of_the_pool(two_threads):
    x = subnormals()
    assert flush_denormals(True) == "2 threads"
    # torch.set_flush_denormal alone sets the calling thread only: the half of x that the second
    # thread multiplies would stay subnormal
    assert (x * 1.0 == 0).all()
    assert flush_denormals(False) == "2 threads"
    assert torch.equal(x * 1.0, x)
    assert flush_denormals(False) == "off"  # not on: nothing to undo


def test_flushed_block_restores_the_mode_it_found(two_threads):
    x = subnormals()
    with denormals_flushed(torch.device("cpu")):
        assert (x * 1.0 == 0).all()
    assert torch.equal(x * 1.0, x)  # off again after the block
    with denormals_flushed(torch.device("meta")):  # not the CPU: nothing changes
        assert torch.equal(x * 1.0, x)
    flush_denormals(True)  # as training has it
    with denormals_flushed(torch.device("cpu")):
        assert (x * 1.0 == 0).all()
    assert (x * 1.0 == 0).all()  # still on: the block did not turn off what it found on


def test_training_flushes_and_puts_the_default_back(tiny_data, tmp_path, two_threads):
    x = subnormals()
    seen = []
    recipe = load_recipe(values=tiny_recipe(tiny_data, train={"epochs": 1, "batch_size": 8, "workers": 2,
                                                               "deterministic": True}))
    train_run(recipe, tmp_path / "run", quiet=True,
              after_step=lambda engine, progress: seen.append(bool((x * 1.0 == 0).all())))
    assert seen and all(seen)
    assert torch.equal(x * 1.0, x)  # off again for the caller
    env = yaml.safe_load((tmp_path / "run" / "env.json").read_text())
    assert env["fast_paths"]["flush_denormal"] == "2 threads"
    if platform.libc_ver()[0] == "glibc":  # glibc's malloc kept freed memory while it trained, and has its defaults back
        assert env["fast_paths"]["malloc_keep_freed"] == "on" and not native._keeping
