"""Section ``memory``: prepare and training peaks in child processes, and the scripts that run it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cnnbench.bench import memory
from cnnbench.bench.results import SectionResult, Target, markdown_table
from cnnbench.bench.settings import QUICK, BenchSettings, build_settings
from cnnbench.bench.suite import BenchContext, run_suite
from cnnbench.errors import CnnbenchError
from cnnbench.train.config import build_config

from .conftest import TRAIN_PER_CLASS, VAL_PER_CLASS, WNIDS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
IMAGES = len(WNIDS) * (TRAIN_PER_CLASS + VAL_PER_CLASS)  # train + val of the tiny archive


def tiny_settings(tiny_zip: Path, **values) -> BenchSettings:
    return build_config(BenchSettings, {"data": str(tiny_zip), "batch_size": 8, "data_per_class": 4,
                                        "memory_steps": 1, **values}, "bench")


def test_memory_target_lower_is_better():
    assert Target("prepare", 60.0, 59.0, unit=" s", lower_is_better=True).met is True
    assert Target("prepare", 60.0, 61.0, unit=" s", lower_is_better=True).met is False
    assert Target("ratio", 20.0, 61.0).met is True  # the default stays "at least"
    assert "lower_is_better" not in Target("ratio", 20.0, 1.0).to_dict()
    section = SectionResult(title="t", targets=[Target("rss", 3000.0, 3100.0, unit=" MB", lower_is_better=True)])
    again = SectionResult.from_dict(json.loads(json.dumps(section.to_dict())))
    assert again.targets == section.targets and again.targets[0].met is False
    assert "- target rss: <= 3,000 MB, measured 3,100 MB: NOT met" in markdown_table(again)


def test_memory_steps_setting():
    assert BenchSettings().memory_steps == 6 and build_settings(quick=True).memory_steps == QUICK["memory_steps"] == 2
    with pytest.raises(CnnbenchError, match="bench.memory_steps: expected a positive integer"):
        build_settings(overrides=["memory_steps=0"])


def test_memory_prepare_probe_measures_a_fresh_cache(tiny_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_HOME", str(tmp_path))
    probe = memory.prepare_probe(str(tiny_zip))
    assert probe["images"] == IMAGES and probe["seconds"] > 0
    assert 0 < probe["imports_rss_mb"] <= probe["peak_rss_mb"]
    (manifest_path,) = tmp_path.glob("cache/*/manifest.json")
    written = sum(f.stat().st_size for f in manifest_path.parent.iterdir() if f.name != "manifest.json")
    assert probe["cache_mb"] == json.loads(manifest_path.read_text())["bytes"] / 2**20 == written / 2**20
    with pytest.raises(CnnbenchError, match="already held a cache"):  # a reused cache would time nothing
        memory.prepare_probe(str(tiny_zip))


def test_memory_section_rows_and_targets(tiny_zip, tmp_path, monkeypatch):
    settings = tiny_settings(tiny_zip)
    calls = []

    def fake_probe(probe: str, argument: str, env: dict | None = None) -> dict:
        calls.append((probe, argument, env))
        if probe == "prepare":
            assert Path(env["CNNBENCH_HOME"]).is_dir() and not any(Path(env["CNNBENCH_HOME"]).iterdir())
            return {"seconds": 75.0, "imports_rss_mb": 700.0, "peak_rss_mb": 780.0, "cache_mb": 320.0, "images": 26000}
        return {"seconds": 4.0, "imports_rss_mb": 710.0, "peak_rss_mb": 2000.0, "images": 8}

    monkeypatch.setattr(memory, "run_probe", fake_probe)
    result = memory.memory_section(BenchContext(settings, log=lambda m: None, work_dir=tmp_path))

    (prepare_call, train_call) = calls
    assert prepare_call[:2] == ("prepare", str(tiny_zip)) and prepare_call[2]["CNNBENCH_HOME"].startswith(str(tmp_path))
    assert not Path(prepare_call[2]["CNNBENCH_HOME"]).exists()  # the temporary home is removed
    assert train_call[0] == "train" and build_config(BenchSettings, json.loads(train_call[1]), "bench") == settings
    prepare, train = result.rows
    assert (prepare["added_mb"], prepare["added_per_cache"]) == (80.0, 0.25)
    assert (train["added_mb"], train["cache_mb"], train["added_per_cache"]) == (1290.0, None, None)
    assert [(t.goal, t.measured, t.lower_is_better, t.met) for t in result.targets] == [
        (60.0, 75.0, True, False), (3000.0, 2000.0, True, True)]
    assert "batch 8, 1 steps" in train["measured"]
    table = markdown_table(result)
    assert "<= 60.0 s, measured 75.0 s: NOT met" in table and "<= 3,000 MB, measured 2,000 MB: met" in table


def test_memory_probe_failure_names_the_child():
    with pytest.raises(CnnbenchError, match=r"the nope child exited with 1:(.|\n)*unknown probe 'nope'; expected one of "
                                            r"prepare, train"):
        memory.run_probe("nope", "x")


@pytest.mark.slow
def test_memory_section_in_child_processes(tiny_zip, tmp_path):
    """The real thing on the tiny archive: two child processes, each importing torch (~5 s apiece)."""
    import torch

    from cnnbench.models import create_model

    settings = tiny_settings(tiny_zip)
    ctx = BenchContext(settings, log=lambda m: None, work_dir=tmp_path)
    section = run_suite(settings, only=["memory"], ctx=ctx)["sections"]["memory"]
    prepare, train = section["rows"]
    for row in (prepare, train):
        assert row["seconds"] > 0
        assert row["imports_rss_mb"] > 100  # torch alone is hundreds of MB resident
        assert row["peak_rss_mb"] >= row["imports_rss_mb"]
        assert row["added_mb"] == pytest.approx(row["peak_rss_mb"] - row["imports_rss_mb"])
    manifest = ctx.dataset(settings.data_per_class).manifest
    assert prepare["images"] == IMAGES and prepare["cache_mb"] == pytest.approx(manifest["bytes"] / 2**20)
    assert prepare["added_per_cache"] == pytest.approx(prepare["added_mb"] / prepare["cache_mb"])
    assert list(tmp_path.glob("memory-home-*")) == []
    # fp32 weights, their gradients and SGD's momentum are all resident during the first step
    weights = sum(p.numel() for p in create_model("resnet18", num_classes=len(WNIDS), input_size=64).parameters())
    assert train["images"] == settings.memory_steps * settings.batch_size
    assert train["added_mb"] > 3 * weights * torch.float32.itemsize / 2**20
    targets = section["targets"]
    assert [t["measured"] for t in targets] == [prepare["seconds"], train["peak_rss_mb"]]
    assert [t["met"] for t in targets] == [prepare["seconds"] <= 60, train["peak_rss_mb"] <= 3000]


def load_script(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("script", "sections", "models"), [
    ("bench_data", ["data", "memory"], BenchSettings().models),
    ("bench_train", ["peaks", "train", "memory"], ["resnet18"]),
])
def test_memory_scripts_wrap_cnnbench_bench(script, sections, models, monkeypatch):
    from cnnbench.cli import build_parser

    module = load_script(script, monkeypatch)
    commands = []
    monkeypatch.setattr(module, "cnnbench_main", lambda argv: commands.append(argv) or 0)
    passed = ["--data", "d.zip", "--set", "repeats=2", "--out", "o.json"]
    assert module.main(passed) == 0 and module.main(["--quick", "--set", "models=[vgg_like]"]) == 0
    full, quick = (build_parser().parse_args(command) for command in commands)
    assert full.only == quick.only == sections and (full.data, full.out, full.quick) == ("d.zip", "o.json", False)
    settings = build_settings(full.quick, full.overrides)
    assert settings.models == models and settings.repeats == 2
    assert quick.quick and build_settings(quick.quick, quick.overrides).models == ["vgg_like"]  # the caller's --set wins
