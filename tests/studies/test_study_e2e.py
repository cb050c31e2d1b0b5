"""One whole study end to end with the real training engine, on a fixture Tiny ImageNet archive.

cambridge18_baselines (logistic regression, one-hidden-layer net, simple CNN, VGG-like, and our
modern ResNet-18) at a tiny scale: one epoch each, 4 training images per class, 40-px inputs.
Every file of the report is checked, and every number in it against the run folders.
"""

from __future__ import annotations

import csv
import json

import pytest

from cnnbench.cli import main
from cnnbench.evaluate.runs import read_metrics, read_summary
from cnnbench.studies import load_study

EXPERIMENTS = ["logistic_regression", "fc_one_hidden", "simple_cnn", "vgg_like", "modern"]


@pytest.fixture(scope="module")
def study_dir(tiny_zip, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "cambridge"
    argv = ["study", "run", "cambridge18_baselines", "--data", str(tiny_zip), "--scale", "0.025",
            "--train-per-class", "4", "--out", str(out), "--quiet",
            "--set", "train.batch_size=8", "--set", "data.input_size=40"]
    assert main(argv) == 0
    return out, argv


def test_every_run_finished_with_the_scaled_recipe(study_dir):
    out, _ = study_dir
    for experiment in EXPERIMENTS:
        run = out / "runs" / experiment / "seed0"
        summary = read_summary(run)
        assert (summary["status"], summary["epochs"], summary["name"]) == ("finished", 1, experiment)
        assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()


def test_report_files(study_dir):
    out, _ = study_dir
    report = out / "report"
    figures = {"published_vs_ours", "bubbles_tiny-imagenet", "curves_tiny-imagenet", *(f"curves_{e}" for e in EXPERIMENTS)}
    assert {p.stem for p in (report / "figures").glob("*.png")} == figures
    for name in ("report.html", "report.md", "published_vs_ours.csv", "results.json", "compare/compare.csv",
                 "compare/compare.md", "compare/compare.json"):
        assert (report / name).stat().st_size > 0, name
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)
    for page in (html, (report / "report.md").read_text(), (report / "compare" / "compare.md").read_text()):
        assert "QUICK PASS at --scale 0.025" in page and "--train-per-class 4" in page


def test_report_numbers_are_the_runs(study_dir):
    out, _ = study_dir
    study = load_study("cambridge18_baselines")
    with open(out / "report" / "published_vs_ours.csv", newline="") as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    assert list(rows) == EXPERIMENTS
    for experiment, row in rows.items():
        run = out / "runs" / experiment / "seed0"
        summary, metrics = read_summary(run), read_metrics(run)
        for metric in ("val_top1", "val_top5", "val_loss", "train_top1"):
            assert float(row[f"ours_{metric}_mean"]) == pytest.approx(summary[metric])
            # the last epoch of metrics.csv (written with 6 significant digits)
            assert float(row[f"ours_{metric}_mean"]) == pytest.approx(metrics[metric][-1], rel=1e-5)
        assert (int(float(row["params"])), float(row["mflops"])) == (summary["params"], pytest.approx(summary["mflops"]))
        assert row["seeds"] == "1" and row["epochs"] in ("1/40", "1")
        published = study.published.get(experiment)
        if published:
            assert float(row["published_val_top1"]) == published.values["val_top1"]
            assert float(row["diff_val_top1"]) == pytest.approx(100 * (summary["val_top1"] - published.values["val_top1"]))
    results = json.loads((out / "report" / "results.json").read_text())
    assert [r["experiment"] for r in results["runs"]] == EXPERIMENTS
    assert "every run trained 0.025 of its epochs" in results["reading"]
    assert "on tiny-imagenet we trained on 4 images per class against the report's 500 (1% of the data)" in results["reading"]
    assert "our tiny-imagenet data has 4 classes (chance 25.0%) against the report's 200 (chance 0.5%)" in results["reading"]


def test_running_again_skips_every_finished_run(study_dir, capsys):
    out, argv = study_dir
    before = {e: (out / "runs" / e / "seed0" / "summary.json").read_text() for e in EXPERIMENTS}
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == len(EXPERIMENTS)
    assert before == {e: (out / "runs" / e / "seed0" / "summary.json").read_text() for e in EXPERIMENTS}
