"""Metrics, McNemar and diagnostics on hand-computed examples (no torch, no data)."""

import math

import numpy as np
import pytest

from cnnbench.evaluate.diagnostics import chance_threshold, diagnose, identical_results
from cnnbench.evaluate.metrics import (
    average_probabilities, confusion_matrix, score_predictions, top_confused_pairs, top_k_indices, worst_classes,
)
from cnnbench.evaluate.significance import exact_binomial_p, mcnemar


def _log_probs(probs):
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def test_scores_match_hand_computed_values():
    # 4 images, 6 classes; image 0 right, 1 wrong but true class 2nd, 2 wrong (true class last), 3 right.
    probs = np.full((4, 6), 0.02)
    probs[0, 1] = 0.9
    probs[1, [3, 0]] = [0.6, 0.3]
    probs[2, [4, 5, 0, 3, 1, 2]] = [0.5, 0.2, 0.1, 0.1, 0.06, 0.04]
    probs[3, 5] = 0.9
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([1, 0, 2, 5])
    s = score_predictions(_log_probs(probs), labels)
    assert s.top1 == 0.5
    assert s.top5 == 0.75  # image 2's true class is ranked 6th of 6
    expected_loss = -np.mean(np.log(probs[np.arange(4), labels]))
    assert s.loss == pytest.approx(expected_loss, rel=1e-5)
    assert s.correct.tolist() == [True, False, False, True]
    assert s.topk[1, :2].tolist() == [3, 0]
    assert s.confusion.sum() == 4 and s.confusion[0, 3] == 1 and s.confusion[2, 4] == 1 and s.confusion[1, 1] == 1
    assert s.per_class_top1[[0, 1, 2, 5]].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert np.isnan(s.per_class_top1[3]) and s.class_counts.tolist() == [1, 1, 1, 0, 0, 1]
    assert s.mean_class_top1 == 0.5
    assert s.true_prob[0] == pytest.approx(probs[0, 1], rel=1e-5)


def test_top_k_order_and_confusion_pairs():
    lp = np.log(np.array([[0.1, 0.4, 0.2, 0.3]]))
    assert top_k_indices(lp, 3).tolist() == [[1, 3, 2]]
    c = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([1, 1, 0, 0, 1, 2]), 3)
    assert c.tolist() == [[1, 2, 0], [1, 1, 0], [0, 0, 1]]
    assert top_confused_pairs(c, 5) == [(0, 1, 2, 2 / 3), (1, 0, 1, 0.5)]
    assert worst_classes(np.array([0.5, np.nan, 0.1, 0.9]), 2).tolist() == [2, 0]


def test_average_probabilities_is_mean_of_softmax():
    a = np.log(np.array([[0.7, 0.2, 0.1]]))
    b = np.log(np.array([[0.1, 0.1, 0.8]]))
    mean = np.exp(average_probabilities([a, b]))
    assert mean.tolist()[0] == pytest.approx([0.4, 0.15, 0.45], abs=1e-6)
    # exact for probabilities far below float32's smallest normal number
    tiny = average_probabilities([np.array([[-200.0, 0.0]]), np.array([[-300.0, 0.0]])])
    assert tiny[0, 0] == pytest.approx(-200 - math.log(2), abs=1e-3)


def test_mcnemar_exact_and_chi_squared():
    assert exact_binomial_p(1, 6) == pytest.approx(2 * (1 + 7) / 128)
    assert exact_binomial_p(0, 0) == 1.0
    a = np.array([True] * 30 + [False] * 10 + [True] * 50)
    b = np.array([False] * 30 + [True] * 10 + [True] * 50)
    result = mcnemar(a, b)
    assert (result.a_only, result.b_only, result.n) == (30, 10, 90)
    assert result.statistic == pytest.approx((20 - 1) ** 2 / 40)
    assert result.p_value == pytest.approx(0.002663, rel=1e-3)  # chi2.sf(9.025, 1)
    small = mcnemar(np.array([True, True, False, True]), np.array([False, True, True, True]))
    assert small.method == "exact binomial" and small.p_value == 1.0


def _metrics(train_loss, val_loss, train_top1, val_top1):
    n = len(train_loss)
    m = {"epoch": np.arange(1, n + 1, dtype=float), "train_loss": np.array(train_loss, float),
         "val_loss": np.array(val_loss, float), "train_top1": np.array(train_top1, float),
         "val_top1": np.array(val_top1, float)}
    m["train_top5"], m["val_top5"] = m["train_top1"], m["val_top1"]
    return m


def test_diagnose_overfitting_sentence_and_gaps():
    m = _metrics(train_loss=[4, 3, 2.5, 2, 1.5, 1.0, 0.7, 0.4, 0.2, 0.1],
                 val_loss=[4.2, 3.5, 3.1, 2.9, 2.8, 2.7, 2.6, 2.8, 3.0, 3.3],
                 train_top1=[.05, .1, .2, .3, .4, .5, .6, .7, .85, .95],
                 val_top1=[.04, .08, .15, .2, .24, .27, .30, .29, .28, .27])
    d = diagnose(m, 200)
    assert d.best_epoch == 7 and d.val_loss_rising_since == 7
    assert d.sentences[0] == "val loss rising since epoch 7; best top-1 at epoch 7"
    assert d.gap_at_best == pytest.approx(0.30) and d.gap_at_last == pytest.approx(0.68)
    assert not d.not_learning and d.flags == []


def test_diagnose_not_learning_and_val_above_train_flags():
    flat = diagnose(_metrics([5.3] * 4, [5.3] * 4, [0.005, 0.006, 0.004, 0.0055], [0.005] * 4), 200)
    assert flat.not_learning and "not learning" in flat.sentences[-1]
    assert chance_threshold(200) == pytest.approx(0.01) and chance_threshold(10) == pytest.approx(0.15)
    leak = diagnose(_metrics([2, 1.5, 1], [1, .8, .5], [0.3, 0.4, 0.5], [0.5, 0.62, 0.8]), 10)
    assert len(leak.flags) == 1 and "30.0% above train" in leak.flags[0] and "epoch 3" in leak.flags[0]
    nan = diagnose(_metrics([2, float("nan")], [1, float("nan")], [0.3, 0.4], [0.3, float("nan")]), 10)
    assert nan.flags == ["train_loss is nan at epoch 2"]
    assert nan.best_epoch == 1  # the unevaluated epoch is skipped


def test_identical_results_only_across_different_models():
    rows = [{"run": "a", "model": "resnet18", "val_top1": 0.4, "val_loss": 2.0},
            {"run": "b", "model": "vgg16", "val_top1": 0.4, "val_loss": 2.0},
            {"run": "c", "model": "resnet18", "val_top1": 0.4, "val_loss": 2.0}]
    flags = identical_results(rows)
    assert len(flags) == 2 and all("identical" in f for f in flags)
