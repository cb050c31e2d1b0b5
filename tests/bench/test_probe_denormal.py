"""benchmarks/probe_denormal.py: the optimiser step timed with flushing off, torch's and cnnbench's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_denormal.py"


def test_probe_denormal_times_three_modes_on_both_states():
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--rounds", "1", "--model", "simple_cnn"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert "simple_cnn, 29.7M parameters, fused Adam" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("state"))
    rows = [line.split() for line in lines[header + 1:]]
    assert [" ".join(r[:2]) for r in rows] == ["half subnormal", "no subnormals"]
    for row in rows:
        off, torch_only, ours, ratio = (float(v.rstrip("x")) for v in row[2:])
        assert min(off, torch_only, ours) > 0
        assert ratio == pytest.approx(off / ours, rel=0.05, abs=0.02)
