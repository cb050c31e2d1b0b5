"""Every shipped study loads; its recipes say what the report says; its published numbers are the report's."""

from __future__ import annotations

import pytest

from cnnbench.errors import CnnbenchError
from cnnbench.studies import list_studies, load_study
from cnnbench.studies.catalog import read_published

STUDIES = ["aalto19_transfer", "cambridge18_baselines", "deepl18_vgg", "qmul_deeper", "skoltech22_cnns"]
MODERN = {"aalto19_transfer": {"modern", "modern_scratch"}}  # our own recipes, where not just `modern`


def test_the_five_reports_are_shipped():
    assert list_studies() == STUDIES
    sources = sorted(load_study(n).source for n in STUDIES)
    assert [s[:3] for s in sources] == ["000", "001", "002", "003", "004"]


@pytest.mark.parametrize("name", STUDIES)
def test_every_recipe_loads_and_names_a_registered_model(name):
    from cnnbench.models import get_model_info
    from cnnbench.models.registry import accepts_input_size

    study = load_study(name)
    for experiment in study.experiments:
        recipe = study.recipe(experiment)
        assert recipe.name == experiment
        info = get_model_info(recipe.model.name)  # raises for an unknown model name
        for option in recipe.model.options:
            assert option in info.options, f"{name}/{experiment}: model {info.name} has no option {option!r}"
        if recipe.model.dropout is not None:
            assert "dropout" in info.options, f"{name}/{experiment}: model {info.name} takes no dropout"
        if recipe.model.pretrained:
            assert info.pretrained_available, f"{name}/{experiment}: no ImageNet weights for {info.name}"
        # The model takes the recipe's input (shapes checked on the meta device: no memory, no compute).
        channels = 1 if recipe.data.grayscale == "gray" else 3
        size = recipe.data.input_size or info.input_size
        assert accepts_input_size(info.name, size, channels, tuple(sorted(recipe.model.options.items()))), \
            f"{name}/{experiment}: {info.name} cannot take {size} px"


@pytest.mark.parametrize("name", STUDIES)
def test_published_rows_match_recipes(name):
    study = load_study(name)
    recipes = {p.stem for p in study.folder.glob("*.yaml")} - {"study"}
    assert set(study.published) <= recipes
    # Ours: one `modern` recipe in every study with Tiny ImageNet rows, on Tiny ImageNet; aalto19,
    # whose rows are from scratch and pretrained, has one against each kind.
    assert recipes - set(study.published) == MODERN.get(name, {"modern"})
    for ours in recipes - set(study.published):
        assert study.recipe(ours).data.name == "tiny-imagenet"
    for row in study.published.values():
        assert row.values, row
        for metric, value in row.values.items():
            assert 0.0 <= value <= (10.0 if metric == "val_loss" else 1.0)
        assert study.recipe(row.experiment).data.name in study.datasets


# The numbers as printed in the reports (accuracies as fractions).
PUBLISHED = {
    ("deepl18_vgg", "a_sgd_rui"): {"val_top1": 0.17, "val_top5": 0.37},
    ("deepl18_vgg", "c_adam_rui_dropout"): {"val_top1": 0.06, "val_top5": 0.20},
    ("deepl18_vgg", "d_adam_he_dropout_bn"): {"val_top1": 0.29, "val_top5": 0.55},
    ("deepl18_vgg", "f_adam_he_bn_l2"): {"val_top1": 0.24, "val_top5": 0.48},
    ("aalto19_transfer", "lenet5_gray28"): {"val_top1": 0.220, "train_top1": 0.218},
    ("aalto19_transfer", "squeezenet11_pre224_50ep"): {"val_top1": 0.546, "train_top1": 0.544},
    ("aalto19_transfer", "resnet18_pre224_50ep"): {"val_top1": 0.665, "train_top1": 0.660},
    ("cambridge18_baselines", "logistic_regression"): {"val_top1": 0.062, "val_top5": 0.176, "val_loss": 4.80},
    ("cambridge18_baselines", "vgg_like"): {"val_top1": 0.245, "val_top5": 0.488, "val_loss": 3.98},
    ("skoltech22_cnns", "m1_sets12_lr1e-3"): {"val_top1": 0.295, "train_top1": 0.55},
    ("skoltech22_cnns", "preact_resnet34_lr1e-3"): {"val_top1": 0.48},
    ("skoltech22_cnns", "densenet161_lr1e-3"): {"val_top1": 0.51},
    ("qmul_deeper", "vgg16_mnist"): {"val_top1": 0.9916, "val_top5": 1.0},
    ("qmul_deeper", "resnet50_cifar10"): {"val_top1": 0.8081, "val_top5": 0.9899},
    ("qmul_deeper", "inception_v3_tiny"): {"val_top1": 0.3669, "val_top5": 0.6201},
}


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_published_numbers_are_the_reports(key):
    study, experiment = key
    assert load_study(study).published[experiment].values == pytest.approx(PUBLISHED[key])


def test_row_counts_and_bounds():
    counts = {n: len(load_study(n).published) for n in STUDIES}
    assert counts == {"deepl18_vgg": 6, "aalto19_transfer": 10, "cambridge18_baselines": 4,
                      "skoltech22_cnns": 11, "qmul_deeper": 9}
    alexnet = load_study("skoltech22_cnns").published["alexnet_lr1e-3"]
    assert (alexnet.relation, alexnet.values["val_top1"]) == ("<", 0.20)  # "never reached 20%"


def test_deepl18_settings():
    study = load_study("deepl18_vgg")
    epochs = {e: study.recipe(e).train.epochs for e in study.published}
    assert epochs == {"a_sgd_rui": 20, "b_adam_rui_bn": 20, "c_adam_rui_dropout": 20,
                      "d_adam_he_dropout_bn": 20, "e_adam_he_bn_l2": 60, "f_adam_he_bn_l2": 100}
    a, d, e, f = (study.recipe(x) for x in ("a_sgd_rui", "d_adam_he_dropout_bn", "e_adam_he_bn_l2", "f_adam_he_bn_l2"))
    assert (a.optim.name, a.model.init, d.optim.name, d.model.init, d.model.dropout) == ("sgd", "normal", "adam", "he", 0.3)
    assert (e.optim.lr, e.optim.l2, e.schedule.name, e.schedule.decay) == (0.01, 0.001, "inverse_time", 1e-6)
    assert (f.optim.lr, f.optim.l2) == (0.001, 0.005) and f.schedule.decay > e.schedule.decay
    assert {study.recipe(x).data.grayscale for x in study.published} == {"drop"}


def test_aalto19_settings():
    study = load_study("aalto19_transfer")
    for experiment in study.published:
        r = study.recipe(experiment)
        assert (r.optim.name, r.optim.lr, r.optim.momentum, r.data.val_split) == ("sgd", 0.001, 0.9, "half")
    lenet = study.recipe("lenet5_gray28")
    assert (lenet.data.grayscale, lenet.data.input_size, lenet.train.batch_size, lenet.train.epochs) == ("gray", 28, 32, 40)
    pre = [study.recipe(e) for e in study.published if "pre224" in e]
    assert {(r.model.pretrained, r.data.input_size, r.train.batch_size) for r in pre} == {(True, 224, 100)}
    assert sorted(r.train.epochs for r in pre) == [10, 10, 10, 50, 50, 50]


def test_cambridge18_settings():
    study = load_study("cambridge18_baselines")
    for experiment in study.published:
        r = study.recipe(experiment)
        assert (r.optim.name, r.optim.lr, r.optim.momentum, r.train.batch_size, r.train.epochs) == ("sgd", 0.01, 0.0, 100, 40)
        assert (r.model.init, r.optim.l2, r.augment.hflip) == ("glorot", 5e-4, 0.5)
        assert r.augment.rotate > 0 and r.augment.translate > 0 and r.augment.brightness > 0
    assert study.recipe("vgg_like").model.dropout == 0.2


def test_skoltech22_settings():
    study = load_study("skoltech22_cnns")
    for experiment in study.published:
        r = study.recipe(experiment)
        assert (r.optim.name, r.optim.weight_decay, r.train.batch_size) == ("radam", 1e-4, 256)
        assert r.optim.lr in (1e-3, 1e-4)
        assert r.train.epochs == (8 if experiment.startswith("densenet") else 20)
        assert len(r.augment.sets) == (0 if experiment == "m1_set1_lr1e-3" else 1)
    step = {e for e in study.published if study.recipe(e).schedule.name == "step"}
    assert step == {"alexnet_lr1e-3", "resnet18_lr1e-3", "resnet18_lr1e-4", "resnet34_lr1e-3",
                    "preact_resnet34_lr1e-3", "densenet161_lr1e-3"}
    assert {(study.recipe(e).schedule.step_epochs, study.recipe(e).schedule.gamma) for e in step} == {(7, 0.1)}


def test_qmul_settings():
    study = load_study("qmul_deeper")
    epochs = {"mnist": 6, "cifar10": 25, "tiny-imagenet": 30}
    for experiment in study.published:
        r = study.recipe(experiment)
        assert (r.optim.lr, r.train.batch_size, r.train.epochs) == (2e-4, 100, epochs[r.data.name])
        assert r.data.input_size == (299 if r.model.name == "inception_v3" else 224)
        assert r.augment == type(r.augment)()  # "no data augmentation"


def test_modern_recipes_use_the_modern_techniques():
    for name, ours in [(n, o) for n in STUDIES for o in sorted(MODERN.get(n, {"modern"}))]:
        r = load_study(name).recipe(ours)
        assert r.train.label_smoothing > 0 and r.train.tta == "flip" and r.train.precision == "bf16"
        assert r.schedule.name == "cosine" and r.optim.nesterov and r.train.channels_last
        assert r.augment.hflip > 0 and (r.augment.crop_padding or r.augment.random_resized_crop)


def test_bad_published_file_names_the_line(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text("experiment,label,compare,val_top1,val_top5,val_loss,train_top1,relation,source,note\n"
                    "a,A,final,0.2,,,,=,Table 1,\n"
                    "b,B,final,29%,,,,=,Table 1,\n")
    with pytest.raises(CnnbenchError, match=r"published.csv:3: val_top1: expected a number, got '29%'"):
        read_published(path)
    path.write_text("experiment,label,compare,val_top1,val_top5,val_loss,train_top1,relation,source,note\n"
                    "a,A,last,0.2,,,,=,Table 1,\n")
    with pytest.raises(CnnbenchError, match="compare: expected one of final, best"):
        read_published(path)


def test_a_metric_may_be_compared_at_another_epoch(tmp_path):
    # Report 003 quotes M1's val top-1 at its peak (epoch 7) beside its train accuracy "after 20
    # epochs": the row compares at the best epoch, train top-1 at the last.
    import numpy as np

    from cnnbench.studies.results import compared_values

    row = load_study("skoltech22_cnns").published["m1_sets12_lr1e-3"]
    assert (row.compare, row.compare_for("val_top1"), row.compare_for("train_top1")) == ("best", "best", "final")
    assert row.compare_text == "best; train_top1=final"
    metrics = {"epoch": np.array([1, 2, 3]), "val_top1": np.array([0.1, 0.3, 0.2]),
               "val_top5": np.array([0.2, 0.5, 0.4]), "val_loss": np.array([4.0, 3.0, 3.5]),
               "train_top1": np.array([0.1, 0.4, 0.6])}
    summary = {"best_epoch": 2, "val_top1": 0.2, "val_top5": 0.4, "val_loss": 3.5, "train_top1": 0.6}
    values = compared_values(summary, metrics, row.compare, row.compare_metric)
    assert (values["val_top1"], values["train_top1"]) == (0.3, 0.6)
    assert compared_values(summary, metrics, "best")["train_top1"] == 0.4
    path = tmp_path / "published.csv"
    path.write_text("experiment,label,compare,val_top1,val_top5,val_loss,train_top1,relation,source,note\n"
                    "a,A,best; train_acc=final,0.2,,,,=,Table 1,\n")
    with pytest.raises(CnnbenchError, match=r"published.csv:2: compare: expected one of final, best, optionally "
                                            r"followed by '; METRIC=MODE' with METRIC one of val_top1, .*'best; train_acc=final'"):
        read_published(path)


def test_unknown_study_lists_close_names():
    with pytest.raises(CnnbenchError, match="did you mean deepl18_vgg"):
        load_study("deepl18")


def test_cli_list_and_show(capsys):
    from cnnbench.cli import main

    assert main(["study", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == STUDIES
    assert main(["study", "show", "deepl18_vgg"]) == 0
    shown = capsys.readouterr().out
    assert "d_adam_he_dropout_bn: D: Adam, HEI, Dropout, BN" in shown
    assert "tiny-imagenet 64px, deepl18_d, adam lr 0.001, constant schedule, batch 32, 20 epochs" in shown
    assert "published (final, Table 3): val_top1 29.0%, val_top5 55.0%" in shown
    assert "F's learning-rate decay: 'higher' than E's 1e-6, no value given; we use 1e-5" in shown
    assert main(["study", "show", "deepl"]) == 2
    assert "cnnbench: error: study 'deepl' not found (did you mean deepl18_vgg?)" in capsys.readouterr().err
