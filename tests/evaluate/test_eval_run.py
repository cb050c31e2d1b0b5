"""evaluate on checkpointed runs: numbers checked against an independent forward pass."""

import csv
import json

import numpy as np
import pytest

from cnnbench.cli import main
from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.evaluation import EvalOptions, evaluate_ensemble, evaluate_run, evaluate_snapshots
from cnnbench.evaluate.results import read_examples, read_predictions
from cnnbench.evaluate.runs import read_evaluations

from eval_fixtures import WNIDS, reference_log_probs, write_checkpointed_run, write_tiny_folder


def test_evaluate_row_and_files_match_a_direct_forward_pass(run, tiny_data):
    row = evaluate_run(run)
    log_probs, labels = reference_log_probs(run, tiny_data)
    assert row["images"] == len(labels) == 12 and row["tag"] == "val" and row["checkpoint"] == "best"
    assert row["top1"] == pytest.approx(np.mean(log_probs.argmax(1) == labels))
    assert row["loss"] == pytest.approx(-log_probs[np.arange(12), labels].mean(), abs=1e-5)
    assert row["top5"] == 1.0  # 4 classes: the truth is always in the top 5
    folder = run / "evaluate"
    assert json.loads((folder / "val.json").read_text()) == row
    confusion = np.load(folder / "val_confusion.npy")
    assert confusion.shape == (4, 4) and confusion.sum() == 12 and confusion.sum(axis=1).tolist() == [3, 3, 3, 3]
    assert np.trace(confusion) == round(row["top1"] * 12)
    per_class = list(csv.DictReader(open(folder / "val_per_class.csv")))
    assert [r["id"] for r in per_class] == WNIDS and per_class[0]["name"] == "goldfish"
    assert [float(r["top1"]) for r in per_class] == pytest.approx(np.diag(confusion) / 3)
    predictions = read_predictions(run)
    assert predictions.top5[:, 0].tolist() == log_probs.argmax(1).tolist()
    assert predictions.files[0] == "val/images/val_0.JPEG" and predictions.correct.sum() == np.trace(confusion)
    examples = read_examples(run)
    assert examples.sample_images.shape == (8, 64, 64, 3) and examples.sample_images.dtype == np.uint8
    assert len(examples.mistake_index) == 12 - np.trace(confusion)


def test_evaluating_another_checkpoint_keeps_the_best_row(run):
    """`--checkpoint last` wrote its row as `val`, replacing best.pt's, which compare then read."""
    best = evaluate_run(run)
    last = evaluate_run(run, EvalOptions(checkpoint="last"))
    assert (best["tag"], last["tag"], last["checkpoint"]) == ("val", "val-last", "last")
    assert json.loads((run / "evaluate" / "val.json").read_text()) == best
    assert (run / "evaluate" / "val-last_confusion.npy").exists()


def test_flip_tta_averages_the_softmax_of_both_views(run, tiny_data):
    row = evaluate_run(run, EvalOptions(tta="flip"))
    plain, labels = reference_log_probs(run, tiny_data)
    flipped, _ = reference_log_probs(run, tiny_data, flip=True)
    mean = (np.exp(plain) + np.exp(flipped)) / 2
    assert row["tag"] == "val-flip" and (run / "evaluate" / "val-flip_confusion.npy").exists()
    assert row["loss"] == pytest.approx(-np.log(mean[np.arange(12), labels]).mean(), abs=1e-5)
    assert row["top1"] == pytest.approx(np.mean(mean.argmax(1) == labels))


def test_tta_defaults_to_the_runs_own_and_the_tag_names_only_another(run, tiny_data, tmp_path):
    flip_run = write_checkpointed_run(tmp_path / "flip-s0", tiny_data, tta="flip")  # same weights as `run`
    row = evaluate_run(flip_run)
    assert (row["tag"], row["tta"]) == ("val", "flip")
    assert row["loss"] == pytest.approx(evaluate_run(run, EvalOptions(tta="flip"))["loss"])
    assert (evaluate_run(flip_run, EvalOptions(tta="none"))["tag"], evaluate_run(run)["tta"]) == ("val-none", "none")
    with pytest.raises(CnnbenchError, match=r"--tta: the runs were trained with different train.tta \(flip, none\)"):
        evaluate_ensemble([run, flip_run], tmp_path / "ens")
    assert evaluate_ensemble([run, flip_run], tmp_path / "ens", EvalOptions(tta="flip"))["tag"] == "val-flip"


def test_other_dataset_with_the_same_classes_is_evaluated_and_other_classes_refused(run, tmp_path):
    other = write_tiny_folder(tmp_path / "other", val=5, seed=7)
    row = evaluate_run(run, EvalOptions(data=str(other)))
    assert row["images"] == 20 and row["tag"].startswith("val-") and row["data"] == str(other)
    log_probs, labels = reference_log_probs(run, other)
    assert row["top1"] == pytest.approx(np.mean(log_probs.argmax(1) == labels))
    shuffled = write_tiny_folder(tmp_path / "shuffled", wnids=[WNIDS[1], WNIDS[0], *WNIDS[2:]])
    with pytest.raises(CnnbenchError, match=r"class 0 is 'n01629819' in the dataset but 'n01443537' in the run"):
        evaluate_run(run, EvalOptions(data=str(shuffled)))
    fewer = write_tiny_folder(tmp_path / "fewer", wnids=WNIDS[:3])
    with pytest.raises(CnnbenchError, match="the dataset has 3 classes, the model was trained on 4"):
        evaluate_run(run, EvalOptions(data=str(fewer)))


def test_ensemble_averages_softmax_and_refuses_different_class_lists(run, tiny_data, tmp_path):
    second = write_checkpointed_run(tmp_path / "cnn-s1", tiny_data, seed=1)
    row = evaluate_ensemble([run, second], tmp_path / "ens")
    a, labels = reference_log_probs(run, tiny_data)
    b, _ = reference_log_probs(second, tiny_data)
    mean = (np.exp(a) + np.exp(b)) / 2
    assert row["loss"] == pytest.approx(-np.log(mean[np.arange(12), labels]).mean(), abs=1e-5)
    assert row["model"] == "ensemble(logreg+logreg)" and row["params"] == 2000
    assert (tmp_path / "ens" / "classes.json").exists() and (tmp_path / "ens" / "evaluate" / "val.json").exists()
    three = write_tiny_folder(tmp_path / "three", wnids=WNIDS[:3])
    odd = write_checkpointed_run(tmp_path / "odd", three, wnids=WNIDS[:3])
    with pytest.raises(CnnbenchError, match="has 3 classes that differ from the 4 of"):
        evaluate_ensemble([run, odd], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_ensemble_refuses_members_whose_data_settings_give_other_split_images(run, tiny_data, tmp_path):
    # holdout=0.5 makes val half of train: images `run` trained on; the split is read through the first member.
    held = write_checkpointed_run(tmp_path / "held-s0", tiny_data, data_keys={"holdout": 0.5})
    for members in ([held, run], [run, held]):
        with pytest.raises(CnnbenchError, match=r"sees other 'val' images than .* \(data settings differ: data.holdout\)"):
            evaluate_ensemble(members, tmp_path / "ens")
    assert not (tmp_path / "ens").exists()
    quick = write_checkpointed_run(tmp_path / "quick-s0", tiny_data, data_keys={"train_per_class": 3})
    assert evaluate_ensemble([run, quick], tmp_path / "ens")["images"] == 12  # only train differs: same val


def test_ensemble_out_folder_may_not_be_a_member(run, tiny_data, tmp_path):
    second = write_checkpointed_run(tmp_path / "cnn-s1", tiny_data, seed=1)
    own = evaluate_run(second)
    with pytest.raises(CnnbenchError, match="--out .*cnn-s1: is one of the ensemble's members"):
        evaluate_ensemble([run, second], tmp_path / "." / "cnn-s1")
    assert read_evaluations(second)["val"] == own  # the member's own row is not replaced by the ensemble's


def test_ensemble_member_named_twice_is_refused(run, tmp_path):
    # listed twice (here once through "./"), a run would be averaged in twice, outweighing the rest
    with pytest.raises(CnnbenchError, match=r"--ensemble: .* is given more than once; name each member once"):
        evaluate_ensemble([run, run.parent / "." / run.name], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_ensemble_members_run_in_their_own_precision(run, tiny_data, tmp_path, monkeypatch):
    import cnnbench.evaluate.evaluation as evaluation

    used = []
    score = evaluation.split_log_probs

    def recording(scorer, pipeline, split, device, precision, *args):
        used.append((scorer.run_dir.name, precision.name))
        return score(scorer, pipeline, split, device, precision, *args)

    monkeypatch.setattr(evaluation, "split_log_probs", recording)
    bf16 = write_checkpointed_run(tmp_path / "bf16-s0", tiny_data, precision="bf16")
    evaluate_ensemble([bf16, run], tmp_path / "ens", EvalOptions(device="cpu"))
    assert used == [("bf16-s0", "bf16"), ("cnn-s0", "fp32")]


def test_snapshot_ensemble_reports_each_snapshot_and_their_average(tmp_path, tiny_data):
    cyclic = write_checkpointed_run(tmp_path / "cyclic", tiny_data, snapshots=3)
    row = evaluate_snapshots(cyclic)
    singles = [reference_log_probs(cyclic, tiny_data, which=f"snapshot-{k}") for k in (1, 2, 3)]
    labels = singles[0][1]
    mean = np.mean([np.exp(lp) for lp, _ in singles], axis=0)
    assert row["tag"] == "val-snapshots" and row["checkpoint"] == "snapshot-1+snapshot-2+snapshot-3"
    assert [float(v) for v in row["snapshot_top1"].split()] == pytest.approx(
        [np.mean(lp.argmax(1) == labels) for lp, _ in singles])
    assert row["loss"] == pytest.approx(-np.log(mean[np.arange(12), labels]).mean(), abs=1e-5)
    with pytest.raises(CnnbenchError, match="no snapshot-<k>.pt files"):
        evaluate_snapshots(write_checkpointed_run(tmp_path / "plain", tiny_data))


def test_a_failed_re_evaluation_leaves_no_old_row_beside_new_arrays(run, monkeypatch):
    import cnnbench.evaluate.results as results

    evaluate_run(run)
    assert "val" in read_evaluations(run)

    def full_disk(scores):  # fails after per_class, confusion and predictions were replaced
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results, "select_examples", full_disk)
    with pytest.raises(OSError, match="No space left"):
        evaluate_run(run)
    assert not (run / "evaluate" / "val.json").exists() and "val" not in read_evaluations(run)


def test_cli_json_row_and_unlabelled_split(run, capsys):
    assert main(["evaluate", str(run), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tag"] == "val" and row["images"] == 12
    assert main(["evaluate", str(run), "--split", "test"]) == 2
    assert "has no labels" in capsys.readouterr().err
