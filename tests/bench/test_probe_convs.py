"""benchmarks/probe_convs.py: the model-only probe behind gemm_conv's table runs and prints every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_convs.py"


def test_probe_convs_prints_every_shape_and_both_model_steps():
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--batch", "2"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    rows = [line for line in lines if " -> " in line and not line.startswith("conv (")]
    assert len(rows) == 8  # every conv shape of ResNet-18 at 64 px
    assert all(len(row.split()[-4:]) == 4 and all(float(v) > 0 for v in row.split()[-4:]) for row in rows)
    steps = [line for line in lines if line.startswith("ResNet-18 64 px training step")]
    assert [s.split(",")[2].split(":")[0].strip() for s in steps] == ["conv_impl torch", "conv_impl auto"]
    assert all(float(s.split(": ")[1].split(" img/s")[0]) > 0 for s in steps)
