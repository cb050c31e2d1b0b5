"""benchmarks/probe_l2.py: both ways of the Keras L2 step are timed for both report models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_l2.py"


def test_probe_l2_times_both_ways_for_both_models():
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--rounds", "1"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    rows = lines[lines.index(next(line for line in lines if line.startswith("model"))) + 1:]
    assert [row[:38].strip() for row in rows] == ["report 000 model E (Adam, L2 1e-3)",
                                                   "report 002 simple CNN (SGD, L2 5e-4)"]
    counts = [float(row[38:].split()[0].rstrip("M")) for row in rows]
    assert counts == [41.8, 29.7]  # the weights the models' own l2_layers put under the penalty
    for row in rows:
        graph, direct, ratio = row[38:].split()[1:]
        assert float(graph) > 0 and float(direct) > 0
        assert float(ratio.rstrip("x")) == pytest.approx(float(graph) / float(direct), rel=0.05, abs=0.02)
