"""A real tiny run, trained with `cnnbench train`, through evaluate, compare and report,
and the report pages rendered in headless Chromium with every figure loaded."""

import csv
import json
import re
import shutil
import subprocess

import pytest
import yaml

from cnnbench.cli import main
from eval_fixtures import write_tiny_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two seeds of one recipe: logistic regression, 4 epochs in 2 cosine cycles (2 snapshots)."""
    root = tmp_path_factory.mktemp("e2e")
    data = write_tiny_folder(root / "data", train=10, val=3, confusing=True)
    recipe = root / "logreg.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "logreg", "data": {"name": "tiny-imagenet", "path": str(data)}, "model": {"name": "logreg"},
        "optim": {"name": "sgd", "lr": 0.001}, "schedule": {"name": "cyclic_cosine", "cycles": 2},
        "train": {"epochs": 4, "batch_size": 8, "precision": "fp32"}}))
    runs = []
    for seed in (0, 1):
        out = root / f"logreg-s{seed}"
        assert main(["train", str(recipe), "--set", f"seed={seed}", "--set", f"name=logreg-s{seed}",
                     "--out", str(out), "--quiet"]) == 0
        runs.append(out)
    return root, runs


def test_evaluate_agrees_with_the_training_engine(trained, capsys):
    _, (run, _) = trained
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    metrics = list(csv.DictReader(open(run / "metrics.csv")))
    at_best = metrics[summary["best_epoch"] - 1]
    # best.pt was saved at the best epoch: evaluating it reproduces that epoch's val numbers.
    assert row["top1"] == pytest.approx(summary["best_val_top1"]) == pytest.approx(float(at_best["val_top1"]))
    assert row["loss"] == pytest.approx(float(at_best["val_loss"]), rel=1e-3)
    # The fixture shows every class's first val image in the next class's colour: a learned model
    # confuses exactly those, so the confusion matrix holds one image per (class, class + 1) cell.
    assert row["top1"] == pytest.approx(2 / 3)
    pairs = list(csv.DictReader(open(run / "evaluate" / "val_per_class.csv")))
    assert [p["confused_count"] for p in pairs] == ["1"] * 4
    assert main(["evaluate", str(run), "--snapshots"]) == 0
    snap = json.loads((run / "evaluate" / "val-snapshots.json").read_text())
    assert snap["checkpoint"] == "snapshot-1+snapshot-2" and len(snap["snapshot_top1"].split()) == 2


def test_evaluate_reproduces_the_training_evaluation_with_flip_tta(tmp_path, capsys):
    """train.tta: flip: `cnnbench evaluate RUN` (no --tta) gives the last epoch's metrics.csv numbers."""
    data = write_tiny_folder(tmp_path / "data", train=10, val=3, confusing=True)
    recipe = tmp_path / "flip.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "flip", "data": {"name": "tiny-imagenet", "path": str(data)}, "model": {"name": "logreg"},
        "optim": {"name": "sgd", "lr": 0.0001}, "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "tta": "flip"}}))
    run = tmp_path / "flip-run"
    assert main(["train", str(recipe), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--checkpoint", "last", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    last = list(csv.DictReader(open(run / "metrics.csv")))[-1]
    # the tag names the checkpoint: `val` stays best.pt's row, the one compare reads by default
    assert (row["tta"], row["tag"], row["checkpoint"]) == ("flip", "val-last", "last")
    assert row["top1"] == pytest.approx(float(last["val_top1"])) and row["top5"] == pytest.approx(float(last["val_top5"]))
    assert row["loss"] == pytest.approx(float(last["val_loss"]), rel=1e-5)
    assert 0.1 < row["loss"] and 0 < row["top1"] < 1  # a model still unsure: averaging logits would differ


def test_compare_and_report_pages_render_in_chromium(trained, capsys):
    root, runs = trained
    for run in runs:
        assert main(["evaluate", str(run)]) == 0
    ensemble = root / "ensemble"
    assert main(["evaluate", *map(str, runs), "--ensemble", "--out", str(ensemble)]) == 0
    out = root / "cmp"
    assert main(["compare", *map(str, runs), str(ensemble), "--out", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["groups"][0]["n"] == 2 and data["groups"][0]["recipe"] == "logreg"
    assert [(t["a"], t["b"]) for t in data["tests"]] == [
        ("logreg-s0", "logreg-s1"), ("logreg-s0", "ensemble"), ("logreg-s1", "ensemble")]
    assert data["tests"][0]["images"] == 12 and data["tests"][0]["method"] == "exact binomial"
    assert data["rows"][2]["model"] == "ensemble(logreg+logreg)" and data["rows"][2]["params"] == 2 * 49_156
    assert main(["report", str(out)]) == 0 and main(["report", str(runs[0])]) == 0
    assert main(["report", str(ensemble)]) == 0
    assert (ensemble / "report" / "report.md").read_text().count("](figures/") == 4  # no curves for an ensemble
    page = (runs[0] / "report" / "report.md").read_text()
    assert "val loss rising since epoch 1; best top-1 at epoch 1" in page
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): page rendering not checked")
    for html, expected in ((runs[0] / "report" / "report.html", 5), (out / "report" / "report.html", 2)):
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", html.as_uri()],
                             capture_output=True, text=True, timeout=60).stdout
        # The page's load handler records how many <img> decoded (complete and naturalWidth > 0).
        body = re.search(r"<body[^>]*>", dom).group(0)
        assert f'data-images-total="{expected}"' in body and f'data-images-loaded="{expected}"' in body
