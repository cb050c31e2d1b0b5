"""benchmarks/probe_convs.py: the model-only probe behind gemm_conv's table runs and prints every row,
and its breakdown of the step's time adds up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnnbench.train import amx_conv


SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_convs.py"


def test_probe_convs_prints_every_shape_and_every_model_step():
    batch = 8
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--batch", str(batch), "--peak-sizes", "128"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    rows = [line for line in lines if " -> " in line and not line.startswith("conv (")]
    assert len(rows) == 8  # every conv shape of ResNet-18 at 64 px
    forced = [line for line in lines if line.strip().startswith("(CoveringConv, without nhwc_ops.cpp)")]
    assert len(forced) == 1 and lines.index(forced[0]) == lines.index(rows[6]) + 1  # under the 2x2 row
    assert all(len(row.split()[-4:]) == 4 and all(float(v) > 0 for v in row.split()[-4:]) for row in rows)
    steps = [line for line in lines if line.startswith("ResNet-18 64 px training step")]
    names = ["torch convs + torch BN", "matmul convs + torch BN", "matmul convs (Python im2col) + fused BN",
             "matmul convs + fused BN + C++ im2col and max pool", "... + the stem's max pool inside its batch norm"]
    if amx_conv.cpu_has_amx():  # the engine's default there: the AMX kernels too
        names.append("... + AMX kernels")
    names[-1] += " (default)"
    assert [s.split(", ")[2].rsplit(": ", 1)[0] for s in steps] == names
    assert all(float(s.split(": ")[1].split(" img/s")[0]) > 0 for s in steps)

    # breakdown: one row per kind of work, the shares add up to the whole step, and the two
    # compute kinds carry the FLOPs (the ceiling divides them by their time alone)
    start = next(i for i, line in enumerate(lines) if line.startswith("where the default step's time goes"))
    table = lines[start + 2:]
    kinds = {}
    for line in table:
        if line.startswith(("whole step", "utilisation ceiling")):
            break
        name, numbers = line[:38].strip(), line[38:].split()
        kinds[name] = [float(v.rstrip("%")) for v in numbers]
    assert {"convolution (oneDNN)", "batch norm (+ ReLU, add, stem pool)"} <= kinds.keys()
    assert sum(v[1] for v in kinds.values()) == pytest.approx(100.0, abs=0.5)
    whole = next(line for line in table if line.startswith("whole step"))[38:].split()  # ms, share, GFLOP, ...
    assert float(whole[0]) == pytest.approx(sum(v[0] for v in kinds.values()), rel=0.01)  # ms/step
    # GFLOP: every executed FLOP is a convolution's or a matmul's; without AMX the default step's
    # im2col matmuls execute what torch's FLOP counter counts for the convolutions they replace
    # (padding taps included), so the executed total is the model's, which the whole-step line uses;
    # with AMX the row of the weight gradients on oneDNN's forward (and of the stem's forward pass on
    # window_forward) counts them as torch's counter would, and the pixel-pair convolutions of layer3
    # and layer4 multiply only the pixel pairs inside the map in all three passes
    executed = kinds["convolution (oneDNN)"][2] + kinds.get("matmul (incl. im2col convolutions)", [0, 0, 0])[2]
    skipped = 0.0
    if amx_conv.cpu_has_amx():
        executed += kinds["AMX convolutions (weight grad, stem)"][2] + kinds["pixel-pair convolutions (AMX)"][2]
        layers = [(128, 256, 8, 3, 2, 1), (128, 256, 8, 1, 2, 0), (256, 256, 4, 3, 1, 1), (256, 256, 4, 3, 1, 1),
                  (256, 256, 4, 3, 1, 1), (256, 512, 4, 3, 2, 1), (256, 512, 4, 1, 2, 0),
                  (512, 512, 2, 3, 1, 1), (512, 512, 2, 3, 1, 1), (512, 512, 2, 3, 1, 1)]  # (in, out, map, k, s, p)
        for cin, cout, size, k, s, p in layers:  # forward, input gradient, weight gradient
            out = (size + 2 * p - k) // s + 1
            inside = sum(0 <= oy * s - p + i < size and 0 <= ox * s - p + j < size
                         for oy in range(out) for ox in range(out) for i in range(k) for j in range(k))
            skipped += 3 * 2 * batch * (k * k * out * out - inside) * cin * cout / 1e9
    else:
        assert "matmul (incl. im2col convolutions)" in kinds
    assert executed == pytest.approx(float(whole[2]) - skipped, abs=0.21)  # four figures printed to 0.1
    ceiling = next(line for line in table if line.startswith("utilisation ceiling"))
    assert float(ceiling.split(": ")[1].split("%")[0]) > 0
