"""Every benchmark section end to end on a tiny archive: the JSON document and its arithmetic."""

from __future__ import annotations

import json

import pytest

from cnnbench.bench.results import SCHEMA
from cnnbench.bench.settings import build_settings
from cnnbench.bench.suite import BenchContext, list_sections, run_suite
from cnnbench.cli import main
from cnnbench.train.config import build_config

TINY = {
    "repeats": 1, "steps": 1, "warmup_steps": 1, "batch_size": 8, "data_per_class": 4,
    "models": ["logreg"], "variants": ["fp32", "bf16_cl"], "peak_sizes": [64], "memory_steps": 1,
    "keras_images": 16, "keras_epochs": 2,
    "scaling_model": "logreg", "scaling_per_class": [2, 4], "scaling_sizes": [32, 64],
    "scaling_sizes_per_class": 4, "scaling_repeats": 1,
    "tta_recipes": ["ours=skoltech22_cnns/modern", "theirs=skoltech22_cnns/resnet18_lr1e-3"],
    "tta_fit_epochs": ["ours"], "tta_budgets": [0.002, 0.004], "tta_target": 0.01, "tta_val_limit": 8,
    "tta_overrides": ["model.name=logreg", "model.options={}", "train.batch_size=8", "train.tta=none"],
}


@pytest.fixture(scope="module")
def document(tiny_zip, tmp_path_factory):
    from cnnbench.bench.settings import BenchSettings

    settings = build_config(BenchSettings, {**TINY, "data": str(tiny_zip)}, "bench")
    ctx = BenchContext(settings, log=lambda message: None, work_dir=tmp_path_factory.mktemp("scratch"))
    return run_suite(settings, quick=True, command="test", ctx=ctx)


def test_document_schema(document):
    assert document["schema"] == SCHEMA
    assert list(document["sections"]) == list_sections() == ["peaks", "data", "memory", "train", "keras", "scaling", "tta"]
    assert len(document["load_before"]) == 3 and len(document["load_after"]) == 3
    assert document["machine"]["cores"] >= 1 and document["machine"]["torch"]
    for section in document["sections"].values():
        assert {"title", "seconds", "rows", "columns", "notes", "targets", "details"} <= section.keys()
        assert section["rows"] and section["seconds"] > 0
        for key, _ in section["columns"]:
            assert any(key in row for row in section["rows"]), key
    json.dumps(document, default=lambda v: v.to_dict())  # everything serialises


def test_data_section_ratios(document):
    rows = document["sections"]["data"]["rows"]
    assert [r["path"][:3] for r in rows] == ["(a)", "(b)", "(c)", "(a)", "(b)"]
    assert [("without" in r["path"]) for r in rows] == [False, False, False, True, True]
    assert {r["images"] for r in rows} == {16}  # 4 classes x 4 images, batches of 8, drop_last
    for row in rows:  # augmented paths divide by (a), the others by (a) without augmentation
        a = rows[3 if "without" in row["path"] else 0]["epoch_s"]
        assert row["slower_than_a"].value == pytest.approx(row["epoch_s"].median / a.median)
        assert row["images_per_s"].median == pytest.approx(16 / row["epoch_s"].median)
    with_aug, without = document["sections"]["data"]["targets"]
    assert with_aug["goal"] == without["goal"] == 20.0
    assert with_aug["measured"] == pytest.approx(rows[1]["slower_than_a"].value)
    assert without["measured"] == pytest.approx(rows[4]["slower_than_a"].value)


def test_train_section_speedups_and_utilisation(document):
    rows = document["sections"]["train"]["rows"]
    assert [r["path"] for r in rows] == ["plain loop: ImageFolder + DataLoader(2), fp32, NCHW", "cnnbench fp32",
                                         "cnnbench bf16 + channels_last"]
    base = rows[0]["images_per_s"].median
    best_section_peak = next(r["gflops"]["median"] for r in document["sections"]["peaks"]["rows"] if r["dtype"] == "bf16")
    for row in rows:
        # logreg: forward 2*12288*4 FLOPs, backward the same again for the weight gradient (the
        # input needs no gradient), so twice the forward (plus the negligible bias terms)
        assert row["gflop_per_image"] == pytest.approx(2 * 2 * 3 * 64 * 64 * 4 / 1e9, rel=0.01)  # 4 classes
        assert row["speedup"].value == pytest.approx(row["images_per_s"].median / base)
        # utilisation pairs each round's rate with the matmul peak read at the start of that round
        for dtype in ("bf16", "fp32"):
            round_peaks = row["round_peaks_gflops"][dtype].runs
            assert len(round_peaks) == len(row["images_per_s"].runs) and all(p > 0 for p in round_peaks)
            expected = [100 * r * row["gflop_per_image"] / p for r, p in zip(row["images_per_s"].runs, round_peaks)]
            assert row[f"mfu_{dtype}_pct"].runs == pytest.approx(expected)
        best = row["best_bf16_peak_gflops"]  # this run's best, or an earlier run's on this machine
        assert best >= max(best_section_peak, row["round_peaks_gflops"]["bf16"].high)
        flops = row["images_per_s"].median * row["gflop_per_image"]
        assert row["mfu_bf16_best_peak_pct"] == pytest.approx(100 * flops / best)
        assert row["mfu_bf16_best_peak_pct"] <= row["mfu_bf16_pct"].high + 1e-9
    assert document["sections"]["train"]["targets"] == []  # no resnet18 in this run: nothing to check


def test_keras_scaling_and_tta_sections(document):
    keras_rows = document["sections"]["keras"]["rows"]
    assert keras_rows[0]["path"].startswith("Keras 3") and keras_rows[0]["vs_keras"].value == 1.0
    assert len(keras_rows) == 4  # Keras, plain loop, cnnbench fp32, cnnbench bf16 + channels_last

    scaling = document["sections"]["scaling"]
    assert [(r["per_class"], r["input_size"], r["images"]) for r in scaling["rows"]] == [
        (2, 64, 8), (4, 64, 16), (4, 32, 16), (4, 64, 16)]
    assert scaling["details"]["fit_train_set_size"]["verdict"] in ("linear", "sublinear", "superlinear")
    assert any("Epoch time vs training-set size" in n for n in scaling["notes"])

    tta = document["sections"]["tta"]
    assert [(r["recipe"], r["budget_min"]) for r in tta["rows"]] == [
        ("ours", 0.002), ("theirs", 0.002), ("ours", 0.004), ("theirs", 0.004)]
    assert [t["goal"] for t in tta["targets"]] == [10.0, 10.0]
    assert set(tta["details"]) == {"ours", "theirs"}
    for budgets in tta["details"].values():
        for run in budgets.values():
            assert run["curve"] and all(0 <= row["val_top1"] <= 1 for row in run["curve"])
    # the reference ran once for the longest budget; both budgets report from that one curve
    assert tta["details"]["theirs"]["0.002"] == tta["details"]["theirs"]["0.004"]


def test_bench_command_writes_json(tiny_zip, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--only", "peaks", "--data", str(tiny_zip), "--set", "peak_sizes=[64]",
                 "--set", "repeats=2", "--out", str(out), "--markdown", str(tmp_path / "bench.md")])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["quick"] is True and list(saved["sections"]) == ["peaks"]
    assert saved["settings"]["repeats"] == 2 and saved["settings"]["data"] == str(tiny_zip)
    assert saved["command"].startswith("cnnbench bench --quick --only peaks")
    assert [len(r["gflops"]["runs"]) for r in saved["sections"]["peaks"]["rows"]] == [2, 2]
    assert "| matmul bf16 |" in (tmp_path / "bench.md").read_text()
    assert "### Matrix-multiply peaks" in capsys.readouterr().out


def test_bench_command_rejects_unknown_section(capsys):
    assert main(["bench", "--only", "nope"]) == 2
    assert "unknown section(s) nope; valid: peaks, data, memory, train, keras, scaling, tta" in capsys.readouterr().err



@pytest.mark.parametrize("override", ["peak_sizes=[]", "peak_sizes=[0]", "warmup_steps=-1", "data_workers=-1",
                                      "data_per_class=0", "scaling_per_class=[0, 4]", "scaling_sizes=[-32, 64]",
                                      "scaling_sizes_per_class=0", "tta_recipes=[]", "tta_val_limit=0", "tta_threads=-1",
                                      "linearity_tolerance=-1"])
def test_bench_refuses_a_bad_setting_in_one_line(override, capsys):
    """Values that used to end in a traceback (an empty peak_sizes: 'NoneType' has no attribute
    'row'; DataLoader(num_workers=-1); no tta recipe: labels[-1]) or in nonsense (n=0 peaks of
    0 GFLOP/s, a negative warm-up meaning none) are refused before anything runs."""
    assert main(["bench", "--only", "peaks", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnbench: error: bench.{override.split('=')[0]}:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--out", "--markdown"])
def test_bench_refuses_an_unwritable_output_before_running(option, tmp_path, capsys, monkeypatch):
    """An --out that is a folder (or lies where no file can be made) ended the command with an
    IsADirectoryError traceback after every section had run, and the results were lost."""
    from cnnbench.bench import suite

    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: pytest.fail("ran before checking the output path"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target in (tmp_path, blocker / "under-a-file.json"):
        assert main(["bench", "--only", "peaks", option, str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cnnbench: error: {option} {target}: ") and len(err.strip().splitlines()) == 1
