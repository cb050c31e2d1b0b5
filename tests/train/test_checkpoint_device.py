"""Checkpoint files (atomic, weights_only, RNG states as tensors) and device/precision choice."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cnnbench.errors import CnnbenchError
from cnnbench.train import checkpoint as ck
from cnnbench.train.device import Precision, cpu_has_fast_bf16, resolve_device, resolve_precision


def draws(g: torch.Generator) -> list:
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.rand(3, generator=g).tolist()]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = ck.capture_rng_state(g)
    expected = draws(g)
    ck.save_checkpoint({"rng": state, "epoch": 3}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in loaded["rng"].values())
    torch.manual_seed(99), np.random.seed(99), random.seed(99), g.manual_seed(99)
    ck.restore_rng_state(loaded["rng"], g)
    assert draws(g) == expected


def test_each_rank_resumes_its_own_rng_states(tmp_path):
    g = torch.Generator()
    states, expected = [], []
    for rank in (0, 1):  # two ranks' streams, as seed_rank leaves them: different
        torch.manual_seed(10 + rank), np.random.seed(rank), random.seed(rank), g.manual_seed(rank)
        states.append(ck.capture_rng_state(g))
        expected.append(draws(g))
    # rng["ranks"] as gather_rng_states writes it: every tensor stacked by rank.
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    ck.save_checkpoint({"rng": dict(states[0], ranks=stacked)}, tmp_path / "c.pt")
    rng = ck.load_checkpoint(tmp_path / "c.pt")["rng"]
    for rank in (1, 0):
        ck.restore_rng_state(ck.rank_rng_state(rng, rank, 2), g)
        assert draws(g) == expected[rank]
    assert ck.rank_rng_state(rng, 1, 4) is None  # saved by another number of processes

    # Checkpoints from before rng["ranks"]: rank 0's global states, each rank's augmentation state.
    old = dict(states[0], augment_ranks=stacked["augment"])
    ck.restore_rng_state(ck.rank_rng_state(old, 1, 2), g)
    drawn = draws(g)
    assert drawn[0] == expected[0][0] and drawn[3] == expected[1][3]


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    ck.save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ck.save_checkpoint({"epoch": 2}, path)
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_unreadable_and_missing_checkpoints_are_user_errors(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CnnbenchError, match="bad.pt: not a readable cnnbench checkpoint"):
        ck.load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CnnbenchError, match="missing.pt: checkpoint not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ck.save_checkpoint({"epoch": 1}, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(CnnbenchError, match=r"no 'best' checkpoint in this run folder \(have: last\)"):
        ck.load_run(tmp_path / "run", "best")


@pytest.mark.parametrize("capabilities, expected", [
    ({"amx_bf16": True, "avx512_bf16": True}, "bf16"),   # Sapphire Rapids and later Xeons
    ({"amx_bf16": False, "avx512_bf16": True}, "bf16"),  # AMD Zen 4/5, Cooper Lake: measured 2.5x fp32 on Zen 5
    ({"amx_bf16": False, "avx512_bf16": False}, "fp32"),
    ({}, "fp32"),
])
def test_auto_precision_on_the_cpu_follows_its_bf16_instructions(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_device_and_precision_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CnnbenchError, match="expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(CnnbenchError, match="no CUDA GPU is available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(CnnbenchError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with Precision("bf16", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not Precision("bf16", cpu).grad_scaler().is_enabled()
