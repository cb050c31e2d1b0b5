"""benchmarks/probe_denormal.py: the optimiser step timed with flushing off, torch's and cnnbench's; a forward
pass with flushing off and cnnbench's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_denormal.py"


def test_probe_denormal_times_the_optimiser_and_inference_with_and_without_flushing():
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--rounds", "1", "--model", "simple_cnn",
                           "--batch", "2"], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert "simple_cnn, 29.7M parameters, fused Adam" in lines[0]
    step_header = next(i for i, line in enumerate(lines) if line.startswith("state"))
    steps = [line.split() for line in lines[step_header + 1:step_header + 3]]
    assert [" ".join(r[:2]) for r in steps] == ["half subnormal", "no subnormals"]
    for row in steps:
        off, torch_only, ours, ratio = (float(v.rstrip("x")) for v in row[2:])
        assert min(off, torch_only, ours) > 0
        assert ratio == pytest.approx(off / ours, rel=0.05, abs=0.02)
    assert any("inference forward pass of 2 images" in line for line in lines)
    forward_header = next(i for i, line in enumerate(lines) if line.startswith("weights"))
    forwards = [line.rsplit(None, 3) for line in lines[forward_header + 1:]]
    assert [r[0] for r in forwards] == ["fp32, a fifth subnormal", "bf16 autocast, a fifth subnormal",
                                        "fp32, no subnormals"]
    for row in forwards:
        off, ours, ratio = (float(v.rstrip("x")) for v in row[1:])
        assert min(off, ours) > 0
        assert ratio == pytest.approx(off / ours, rel=0.05, abs=0.02)
