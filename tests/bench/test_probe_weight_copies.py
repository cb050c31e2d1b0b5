"""benchmarks/probe_weight_copies.py: the three ways of the weights' part of a step are timed for both
optimiser settings, and plain momentum SGD ends with the same weights every way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnnbench.train.weight_copies import SGD_STEP

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_weight_copies.py"


@pytest.mark.skipif(SGD_STEP.load() is None, reason=f"no C++ toolchain: {SGD_STEP.error}")
def test_probe_weight_copies_times_every_way_and_checks_the_weights():
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1", "--rounds", "1", "--batch", "8"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    rows = [line for line in lines[2:] if "same weights" not in line]
    assert [(row[:64].strip().split(" (")[0], row[65:89].strip()) for row in rows] == [
        (setting, way) for setting in ("SGD, momentum 0.9", "SGD, momentum 0.9, Nesterov, weight decay", "Adam")
        for way in ("torch", "copies", "copies + bf16 gradients")]
    for row in rows:
        assert float(row[89:].split()[0]) > 0
    verdicts = [line.rsplit(": ", 1)[1] for line in lines if "same weights" in line]
    assert verdicts[0] == "yes" and len(verdicts) == 3  # torch's fused kernels and Adam may round otherwise
    assert rows[0].endswith(" 1.00x")
