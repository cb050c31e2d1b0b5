"""benchmarks/gpu.py in its CPU smoke mode, and the device-resident loader it relies on."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cnnbench.bench.device_data import DeviceResidentLoader
from cnnbench.data import BatchLoader, load_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_device_resident_loader_matches_batch_loader(tiny_zip):
    split = load_dataset("tiny-imagenet", data=str(tiny_zip)).split("train")
    host = BatchLoader(split, batch_size=5, shuffle=True, seed=3)
    held = DeviceResidentLoader(split, batch_size=5, device="cpu", shuffle=True, seed=3)
    assert len(held) == len(host) == 32 // 5
    for epoch in (0, 1):
        host.set_epoch(epoch)
        held.set_epoch(epoch)
        for (x_host, y_host), (x_held, y_held) in zip(host, held, strict=True):
            assert x_held.dtype == torch.uint8 and x_held.shape == (5, 3, 64, 64)
            assert torch.equal(x_host, x_held) and torch.equal(y_host, y_held)
    held.set_epoch(2)
    it = iter(held)
    next(it)
    assert held.state_dict() == {"epoch": 2, "position": 1}
    tail = DeviceResidentLoader(split, batch_size=5, device="cpu", shuffle=False, drop_last=False)
    sizes = [len(y) for _, y in tail]
    assert sizes == [5] * 6 + [2] and np.array_equal(torch.cat([y for _, y in tail]).numpy(), split.labels)


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fp32_rows_run_no_tf32_on_cuda(monkeypatch):
    """The plain loop and 'cnnbench fp32' rows are fp32: cuDNN's convolutions, TF32 by default
    (torch.backends.cudnn.allow_tf32), were left on when only the matmuls were switched off."""
    module = load_script(monkeypatch)
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        module.exact_fp32(torch.device("cpu"))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # a CPU run changes nothing
        module.exact_fp32(torch.device("cuda"))
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def test_gpu_script_smoke_on_cpu(tiny_zip, tmp_path, capsys, monkeypatch):
    module = load_script(monkeypatch)
    out = tmp_path / "gpu.json"
    assert module.main(["--device", "cpu", "--tiny", "--data", str(tiny_zip), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert list(saved["sections"]) == ["peaks", "throughput", "time_to_target"]
    rows = saved["sections"]["throughput"]["rows"]
    assert [r["path"] for r in rows] == ["plain loop: ImageFolder + DataLoader(2), fp32, NCHW",
                                         "cnnbench fp32, data on the GPU", "cnnbench bf16 + channels_last, data on the GPU"]
    assert all(r["images_per_s"]["median"] > 0 for r in rows)
    assert saved["sections"]["throughput"]["targets"][0]["goal"] == 40.0
    curve = saved["sections"]["time_to_target"]["details"]["curve"]
    assert curve and curve[-1]["epoch"] <= 1.0
    assert "GPU time to 1% val top-1" in capsys.readouterr().out
