"""benchmarks/probe_optim.py: the table behind optim.fused's rule prints a time for both paths of
every optimiser setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_optim.py"


def test_probe_optim_times_both_paths_of_every_setting():
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--rounds", "1"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert "11.3 M parameters" in lines[0]  # ResNet-18 with 200 classes
    rows = lines[lines.index(next(line for line in lines if line.startswith("optimiser"))) + 1:]
    assert [row[:44].strip() for row in rows] == [
        "SGD, momentum 0.9", "SGD, momentum 0.9, Nesterov", "SGD, momentum 0.9, weight decay",
        "SGD, momentum 0.9, Nesterov, weight decay", "SGD, no momentum", "Adam", "AdamW"]
    for row in rows:
        default, fused, ratio = row[44:].split()
        assert float(default) > 0 and float(fused) > 0
        # the ratio of the unrounded times; the printed ones are rounded to 0.01 ms
        assert float(ratio.rstrip("x")) == pytest.approx(float(default) / float(fused), rel=0.05, abs=0.02)
