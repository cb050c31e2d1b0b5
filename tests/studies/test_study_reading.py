"""The study reading's rank correlation: tied epochs share their average rank."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cnnbench.studies.reading import StudyConditions, _epochs_sentence, _spearman

CONDITIONS = StudyConditions(scale=1.0, train_per_class={"tiny-imagenet": 80.0})


def test_spearman_gives_tied_values_their_average_rank():
    # The reviewer's case: five rows at 20 epochs in listing order 5..1 points, one at 8 with 3.
    assert _spearman(np.array([20, 20, 20, 20, 20, 8]), np.array([5, 4, 3, 2, 1, 3])) == pytest.approx(0.0)
    assert _spearman(np.array([20] * 6 + [8]), np.array([6, 5, 4, 3, 2, 1, 3.5])) == pytest.approx(0.0)
    assert _spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    # ranks x [0, 1.5, 1.5, 3] and y [0.5, 0.5, 2, 3]: Pearson's r of the ranks
    assert _spearman(np.array([1, 2, 2, 5]), np.array([3, 3, 4, 9])) == pytest.approx(
        np.corrcoef([0, 1.5, 1.5, 3], [0.5, 0.5, 2, 3])[0, 1])


def test_tied_epochs_do_not_invent_a_trend():
    rows = [SimpleNamespace(epochs=e, difference=lambda d=d: d / 100) for e, d in zip([20, 20, 20, 20, 20, 8], [5, 4, 3, 2, 1, 3])]
    assert _epochs_sentence(rows) is None


def test_overfitting_sentence_takes_train_and_val_from_the_compared_epoch():
    # skoltech22's ResNet-18 row is compared at its best epoch (val 19.6%, train 48.1%); by the last
    # epoch train was 83.9% and val 19.1%. The sentence once paired the best epoch's train top-1
    # with the last epoch's gap ("train top-1 48.1%, 64.8 points above val").
    from cnnbench.studies.reading import _gap_sentences
    from cnnbench.studies.results import Stat

    metrics = {"epoch": np.array([7, 20]), "val_top1": np.array([0.196, 0.191]), "train_top1": np.array([0.481, 0.839]),
               "val_top5": np.array([0.4, 0.4]), "val_loss": np.array([3.6, 4.9])}
    run = SimpleNamespace(values={"val_top1": 0.196, "train_top1": 0.481}, metrics=metrics,
                          summary={"best_epoch": 7, "val_top1": 0.191, "train_top1": 0.839},
                          diagnosis=SimpleNamespace(val_loss_rising_since=8, best_val_top1=0.196, not_learning=False,
                                                    gap_at_last=0.839 - 0.191, eval_mode_off_at=None,
                                                    still_rising_since=None))
    row = SimpleNamespace(label="ResNet-18", compare="best", epochs=20, full_epochs=20, runs=[run],
                          published=SimpleNamespace(relation="=", values={"val_top1": 0.45}),
                          difference=lambda: 0.196 - 0.45, stat=lambda metric: Stat.of([run.values[metric]]))
    sentence = _gap_sentences([row], CONDITIONS)[0]
    assert "train top-1 48.1% at its best epoch, 28.5 points above val" in sentence


def test_a_val_loss_far_above_a_guess_is_named_as_the_eval_mode_network_not_overfitting():
    # qmul's MNIST quick pass: Inception-V3 after 10 steps, train top-1 25.7% and loss 3.22, val 9.8%
    # and loss 290.1 in eval mode (35% with batch statistics on 200 val images).
    from cnnbench.evaluate.diagnostics import diagnose
    from cnnbench.studies.reading import _gap_sentences
    from cnnbench.studies.results import Stat

    metrics = {"epoch": np.array([1]), "val_top1": np.array([0.098]), "train_top1": np.array([0.257]),
               "val_top5": np.array([0.495]), "train_top5": np.array([0.68]), "val_loss": np.array([290.0954]),
               "train_loss": np.array([3.22346])}
    diagnosis = diagnose(metrics, 10)
    assert diagnosis.eval_mode_off_at == 1
    assert diagnosis.sentences[-1].startswith("val loss 290.1 at epoch 1, 126x a uniform guess's (2.30), with train "
                                              "loss 3.22: the eval-mode network is far from the training one, not overfit")
    run = SimpleNamespace(values={"val_top1": 0.098, "train_top1": 0.257}, metrics=metrics, num_classes=10,
                          summary={"best_epoch": 1, "val_top1": 0.098, "train_top1": 0.257}, diagnosis=diagnosis)
    row = SimpleNamespace(label="Inception-V3, MNIST", compare="final", epochs=1, full_epochs=6, runs=[run],
                          published=SimpleNamespace(relation="=", values={"val_top1": 0.9923}),
                          difference=lambda: 0.098 - 0.9923, stat=lambda metric: Stat.of([run.values[metric]]))
    sentence = _gap_sentences([row], CONDITIONS)[0]
    assert ("its eval-mode network was far from the training one (val loss 290.1, 126x a uniform guess's, with train "
            "loss 3.22: batch-norm running statistics that have not caught up, as after few steps)") in sentence
    assert "fit its training images far better than val" not in sentence  # 15.9 points, but not overfitting

    # An overfit run drives its train loss towards 0: a high val loss there is not this
    overfit = dict(metrics, train_loss=np.array([0.05]), train_top1=np.array([0.99]), val_loss=np.array([9.0]))
    assert diagnose(overfit, 10).eval_mode_off_at is None
    # nor is a run that is not learning at all
    flat = dict(metrics, train_top1=np.array([0.11]), val_loss=np.array([40.0]))
    assert diagnose(flat, 10).eval_mode_off_at is None


# Report 002's VGG-like net on train80 (session 12: plain SGD 0.01, batch 100, 40 epochs): val
# top-1 left chance around epoch 15 and was still climbing at epoch 40.
VGG_LIKE_VAL = [.0067, .0061, .0050, .0060, .0056, .0055, .0051, .0059, .0063, .0054, .0059, .0064, .0078, .0083,
                .0074, .0096, .0098, .0139, .0144, .0167, .0165, .0148, .0183, .0179, .0197, .0226, .0189, .0230,
                .0201, .0233, .0287, .0232, .0243, .0271, .0246, .0280, .0311, .0333, .0342, .0322]


def vgg_like_metrics(val_top1=VGG_LIKE_VAL):
    n = len(val_top1)
    return {"epoch": np.arange(1, n + 1, dtype=float), "val_top1": np.array(val_top1),
            "train_top1": np.linspace(0.0043, 0.0274, n), "val_top5": np.array(val_top1) * 3,
            "train_top5": np.linspace(0.02, 0.09, n), "val_loss": np.linspace(5.30, 4.96, n),
            "train_loss": np.linspace(6.33, 5.91, n)}


def test_a_run_still_climbing_at_its_last_epoch_is_read_as_under_trained():
    from cnnbench.evaluate.diagnostics import diagnose
    from cnnbench.studies.reading import _gap_sentences
    from cnnbench.studies.results import Stat

    metrics = vgg_like_metrics()
    diagnosis = diagnose(metrics, 200)
    assert diagnosis.still_rising_since == 30  # the last quarter: 2.33% there, 3.22% at epoch 40
    assert ("still improving when it stopped: val top-1 +0.9% since epoch 30, ending at its best (train top-1 2.7%): "
            "under-trained, more epochs would raise it") in diagnosis.sentences
    run = SimpleNamespace(values={"val_top1": 0.0322, "train_top1": 0.0274}, metrics=metrics, num_classes=200,
                          summary={"best_epoch": 39, "val_top1": 0.0322, "train_top1": 0.0274}, diagnosis=diagnosis)
    row = SimpleNamespace(label="VGG-like", dataset="tiny-imagenet", compare="final", epochs=40, full_epochs=40,
                          runs=[run], published=SimpleNamespace(relation="=", values={"val_top1": 0.245}),
                          difference=lambda: 0.0322 - 0.245, stat=lambda metric: Stat.of([run.values[metric]]))
    sentence = _gap_sentences([row], CONDITIONS)[0]
    assert ("it was still improving when it stopped (val top-1 +0.9 points since epoch 30, train top-1 2.7%: "
            "under-trained; with 80 images per class against 500 it took 16% of the report's optimiser steps per "
            "epoch)") in sentence


@pytest.mark.parametrize("case,val_top1", [
    ("levelled off", list(np.linspace(0.10, 0.28, 30)) + list(np.linspace(0.281, 0.30, 10))),  # +2 points, 7% of 30
    ("a small gain", list(np.linspace(0.005, 0.0100, 30)) + list(np.linspace(0.0104, 0.0140, 10))),  # +0.4 points
    ("past its best", VGG_LIKE_VAL[:-1] + [0.0280]),  # the last epoch 0.6 points under the best
    ("too few evaluations", [0.01, 0.03]),
])
def test_runs_that_levelled_off_or_fell_back_are_not_called_under_trained(case, val_top1):
    from cnnbench.evaluate.diagnostics import diagnose

    diagnosis = diagnose(vgg_like_metrics(val_top1), 200)
    assert diagnosis.still_rising_since is None, case
    assert not any("still improving" in s for s in diagnosis.sentences)
