"""compare: the joined table, seed groups, McNemar tests and flags, from synthetic run folders."""

import csv
import json
import shutil

import numpy as np
import pytest

from cnnbench.cli import main
from cnnbench.evaluate.results import read_predictions
from cnnbench.evaluate.significance import mcnemar
from cnnbench.report.compare import build_comparison, write_comparison


def test_rows_take_val_numbers_from_evaluation_else_best_epoch(runs):
    comparison = build_comparison(runs)
    rows = {r["name"]: r for r in comparison.rows}
    evaluated = json.loads((runs[0] / "evaluate" / "val.json").read_text())
    assert rows["resnet18-s0"]["val_top1"] == evaluated["top1"] and rows["resnet18-s0"]["source"] == "evaluate/val"
    # squeezenet was not evaluated: metrics.csv at its best epoch (the last, the curve only rises)
    metrics = list(csv.DictReader(open(runs[3] / "metrics.csv")))
    assert rows["squeezenet"]["source"] == "metrics@best"
    assert rows["squeezenet"]["val_top1"] == pytest.approx(float(metrics[-1]["val_top1"]))
    assert rows["squeezenet"]["best_epoch"] == 6
    m = list(csv.DictReader(open(runs[2] / "metrics.csv")))[-1]
    assert rows["vgg16"]["gap_last"] == pytest.approx(float(m["train_top1"]) - float(m["val_top1"]))
    assert rows["vgg16"]["params"] == 138_000_000 and rows["vgg16"]["s_per_epoch"] == 12.5


def test_best_epoch_is_the_one_train_monitor_chose(tmp_path):
    """Under ``monitor: val_loss`` best.pt holds the lowest-loss epoch, which need not have the
    highest top-1: the table's best epoch, its val numbers and gap@best are that epoch's, as in
    summary.json — not the epoch of the highest top-1."""
    from report_fixtures import write_run

    run = write_run(tmp_path / "l2", "l2", "vgg_like", epochs=6, evaluate=False)
    metrics = list(csv.DictReader(open(run / "metrics.csv")))
    summary = json.loads((run / "summary.json").read_text())
    summary.update(monitor="val_loss", best_epoch=3, best_val_top1=float(metrics[2]["val_top1"]))
    (run / "summary.json").write_text(json.dumps(summary))
    row = build_comparison([run]).rows[0]
    chosen = metrics[2]
    assert row["best_epoch"] == 3 and row["source"] == "metrics@best"
    assert row["val_top1"] == pytest.approx(float(chosen["val_top1"]))
    assert row["val_loss"] == pytest.approx(float(chosen["val_loss"]))
    assert row["gap_best"] == pytest.approx(float(chosen["train_top1"]) - float(chosen["val_top1"]))


def test_seed_groups_mean_and_sample_std(runs):
    comparison = build_comparison(runs)
    assert len(comparison.groups) == 1
    group = comparison.groups[0]
    top1 = [json.loads((r / "evaluate" / "val.json").read_text())["top1"] * 100 for r in runs[:2]]
    assert group["n"] == 2 and group["recipe"] == "resnet18"
    assert group["val_top1"] == f"{np.mean(top1):.2f} ± {np.std(top1, ddof=1):.2f}"


def test_mcnemar_pairs_only_runs_on_the_same_images(runs):
    comparison = build_comparison(runs)
    assert [(t["a"], t["b"]) for t in comparison.tests] == [
        ("resnet18-s0", "resnet18-s1"), ("resnet18-s0", "vgg16"), ("resnet18-s1", "vgg16")]
    a, b = read_predictions(runs[0]), read_predictions(runs[1])
    expected = mcnemar(a.correct, b.correct)
    assert comparison.tests[0]["a_only"] == expected.a_only == int(np.sum(a.correct & ~b.correct))
    assert comparison.tests[0]["p_value"] == expected.p_value
    # Different images (another file order) are not paired.
    path = runs[2] / "evaluate" / "val_predictions.npz"
    data = dict(np.load(path))
    data["files"] = data["files"][::-1]
    np.savez_compressed(path, **data)
    assert [(t["a"], t["b"]) for t in build_comparison(runs).tests] == [("resnet18-s0", "resnet18-s1")]


def test_identical_results_of_different_models_are_flagged(runs, tmp_path):
    copy = tmp_path / "densenet"
    shutil.copytree(runs[0], copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary.update(name="densenet", model="densenet121")
    (copy / "summary.json").write_text(json.dumps(summary))
    flags = build_comparison([runs[0], copy]).flags
    assert len(flags) == 1 and "identical val_top1 and val_loss" in flags[0]


def test_an_eval_mode_network_far_from_the_training_one_is_flagged(tmp_path):
    from report_fixtures import write_run

    run = write_run(tmp_path / "short", "short", "inception_v3", epochs=2, evaluate=False)
    assert build_comparison([run]).flags == []
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    rows[-1]["val_loss"] = str(40 * float(rows[-1]["train_loss"]))  # train loss stays where it was
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    flags = build_comparison([run]).flags
    assert flags == ["short: eval-mode network far from the training one at epoch 2 (val loss many times a uniform "
                     "guess's, train loss not; batch-norm running statistics that have not caught up)"]


def test_written_files_and_cli(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| resnet18-s0 | resnet18 | 0 |" in printed and "Mean ± std over seeds" in printed
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["name"] for r in rows] == ["resnet18-s0", "resnet18-s1", "vgg16", "squeezenet"]
    assert float(rows[2]["mflops"]) == 1250.0
    assert len(list(csv.DictReader(open(out / "mcnemar.csv")))) == 3
    data = json.loads((out / "compare.json").read_text())
    assert data["tag"] == "val" and len(data["runs"]) == 4
    assert (out / "compare.md").read_text().startswith("# Comparison of 4 runs")
    markdown = write_comparison(build_comparison(runs), tmp_path / "again")["markdown"].read_text()
    assert markdown == (out / "compare.md").read_text()


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnbench: error: ") and "not a run folder" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["metrics.csv", "summary.json", "recipe.yaml", "evaluate/val.json"])
def test_compare_refuses_a_run_file_that_is_not_text_in_one_line(runs, name, capsys):
    """A damaged file (binary bytes, not UTF-8) is a user error naming the file, not a UnicodeDecodeError traceback."""
    path = runs[0] / name
    path.write_bytes(b"\xff\xfe\x00\x80" + bytes(range(256)))
    assert main(["compare", str(runs[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnbench: error: {path}: ") and "UTF-8" in err and err.count("\n") == 1


@pytest.mark.parametrize("command, name", [("compare", "val_predictions.npz"), ("report", "val_predictions.npz"),
                                           ("report", "val_confusion.npy"), ("report", "val_examples.npz")])
def test_a_damaged_evaluation_array_is_refused_in_one_line(runs, command, name, capsys):
    """A truncated .npz/.npy (a copy cut short, a full disk) names the file instead of a BadZipFile/ValueError traceback."""
    path = runs[0] / "evaluate" / name
    path.write_bytes(path.read_bytes()[:200])
    assert main([command, str(runs[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnbench: error: {path}: damaged") and err.count("\n") == 1


def test_predictions_without_a_documented_array_are_refused_in_one_line(runs, capsys):
    path = runs[0] / "evaluate" / "val_predictions.npz"
    data = dict(np.load(path))
    del data["correct"]
    np.savez_compressed(path, **data)
    assert main(["compare", str(runs[0]), str(runs[1])]) == 2
    assert capsys.readouterr().err == f"cnnbench: error: {path}: no array 'correct' (expected labels, top5, top5_prob, true_prob, correct, files)\n"


def test_compare_into_a_used_out_folder_leaves_no_files_of_the_earlier_comparison(runs, tmp_path):
    """seeds.csv and mcnemar.csv of an earlier comparison in the same --out would read as this one's."""
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    assert (out / "seeds.csv").exists() and (out / "mcnemar.csv").exists()
    assert main(["compare", str(runs[2]), str(runs[3]), "--out", str(out)]) == 0  # no seed group, no pair
    assert not (out / "seeds.csv").exists() and not (out / "mcnemar.csv").exists()
    assert [r["name"] for r in csv.DictReader(open(out / "compare.csv"))] == ["vgg16", "squeezenet"]


@pytest.mark.parametrize("last", ["7,1.9", "7,1.9,0.5,0.8,2.5,0.4,0.7,0.1,12.5,640.0,99"])
def test_compare_refuses_a_metrics_row_with_the_wrong_number_of_values(runs, last, capsys):
    """A row cut short (or run together with another) is damage, not an epoch with empty val columns."""
    path = runs[3] / "metrics.csv"
    path.write_text(path.read_text() + last + "\n")
    assert main(["compare", str(runs[3])]) == 2
    err = capsys.readouterr().err
    assert err == f"cnnbench: error: {path}: line 8 does not have the header's 10 values (a damaged file?)\n"


def test_mcnemar_skips_predictions_without_their_evaluation_row(runs):
    """The row is written last and removed first (results.write_evaluation): predictions without it
    belong to an interrupted re-evaluation, possibly of another checkpoint than the table's numbers."""
    (runs[1] / "evaluate" / "val.json").unlink()
    comparison = build_comparison(runs)
    assert {r["name"]: r["source"] for r in comparison.rows}["resnet18-s1"] == "metrics@best"
    assert [(t["a"], t["b"]) for t in comparison.tests] == [("resnet18-s0", "vgg16")]


def test_compare_refuses_a_run_named_twice(runs, capsys):
    """Named twice (overlapping globs), one run made a seed group of two with std 0.00 and a McNemar test against itself."""
    again = runs[0].parent / "." / runs[0].name
    assert main(["compare", str(runs[0]), str(runs[2]), str(again)]) == 2
    assert capsys.readouterr().err == f"cnnbench: error: compare: {again} is given more than once; name each run once\n"
