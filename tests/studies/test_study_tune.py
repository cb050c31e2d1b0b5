"""``cnnbench tune``: coarse random then narrowed TPE, median pruning, SQLite storage, best recipe file."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
from study_fakes import FakeEpochEngine

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.runs import read_metrics, read_summary
from cnnbench.studies.tune import (
    ParamRange, TuneOptions, load_space, median_pruner, narrow_space, trial_dir, tune_recipe,
)
from cnnbench.train.config import load_recipe

optuna = pytest.importorskip("optuna")

RECIPE = """\
name: tiny_tune
data: {name: tiny-imagenet, train_per_class: 2}
model: {name: simple_cnn}
optim: {name: sgd, lr: 0.1}
train: {epochs: 6, batch_size: 16}
"""
SPACE = """\
optim.lr: {type: float, low: 1.0e-5, high: 1.0, log: true}
optim.momentum: {type: float, low: 0.0, high: 0.9, step: 0.1}
train.batch_size: {type: categorical, choices: [16, 32]}
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "space.yaml").write_text(SPACE)
    return tmp_path


def test_coarse_then_fine_search_prunes_and_writes_the_best_recipe(files):
    engine = FakeEpochEngine()
    options = TuneOptions(trials=8, out=files / "out", seed=0, coarse_fraction=0.5)
    result = tune_recipe(files / "recipe.yaml", files / "space.yaml", options, trainer=engine)
    storage = optuna.load_study(study_name="tiny_tune", storage=f"sqlite:///{files / 'out' / 'optuna.db'}")
    trials = storage.trials
    assert len(trials) == 8 == result.trials
    states = [t.state.name for t in trials]
    assert result.pruned == states.count("PRUNED") >= 1 and engine.epochs_trained < 8 * 6
    # The fine phase searched inside the region of the best coarse trials.
    coarse_lr = [t.distributions["optim.lr"] for t in trials[:4]]
    fine_lr = [t.distributions["optim.lr"] for t in trials[4:]]
    assert {(d.low, d.high) for d in coarse_lr} == {(1e-5, 1.0)}
    assert all(d.low > 1e-5 or d.high < 1.0 for d in fine_lr)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert (result.best_trial, result.best_value) == (best.number, pytest.approx(best.value))
    tuned = load_recipe(result.best_recipe)  # a valid recipe with the best trial's values in it
    assert tuned.optim.lr == pytest.approx(best.params["optim.lr"])
    assert tuned.train.batch_size == best.params["train.batch_size"]
    assert result.best_recipe.read_text().startswith(f"# cnnbench tune: trial {best.number} of study 'tiny_tune'")
    # Complete trials reported every epoch; pruned ones stopped early, but not within the warm-up epoch.
    for t in trials:
        reported = sorted(t.intermediate_values)
        if t.state.name == "COMPLETE":
            assert reported == [1, 2, 3, 4, 5, 6]
        elif t.state.name == "PRUNED":
            assert reported == list(range(1, len(reported) + 1)) and options.prune_warmup_epochs < len(reported) < 6


def test_a_second_call_continues_the_same_search(files):
    options = TuneOptions(trials=3, out=files / "out", seed=1)
    tune_recipe(files / "recipe.yaml", files / "space.yaml", options, trainer=FakeEpochEngine())
    engine = FakeEpochEngine()
    result = tune_recipe(files / "recipe.yaml", files / "space.yaml", TuneOptions(trials=4, out=files / "out", seed=1),
                         trainer=engine)
    assert result.trials == 4 and engine.epochs_trained <= 6  # only the one missing trial ran


def test_a_new_storage_beside_an_earlier_searchs_trial_folders_is_refused_up_front(files):
    """After deleting optuna.db, every trial once failed on its existing folder ('folder exists and is not
    empty') and was stored as failed, so even a second attempt after clearing the folders ran nothing."""
    tune_recipe(files / "recipe.yaml", files / "space.yaml", TuneOptions(trials=2, out=files / "out", seed=0),
                trainer=FakeEpochEngine())
    (files / "out" / "optuna.db").unlink()
    engine = FakeEpochEngine()
    with pytest.raises(CnnbenchError, match=r"trials/tiny_tune-0000: a trial folder of an earlier search of study "
                                            r"'tiny_tune' that sqlite:///.*optuna.db does not hold \(2 such folders\)"):
        tune_recipe(files / "recipe.yaml", files / "space.yaml", TuneOptions(trials=2, out=files / "out", seed=0), trainer=engine)
    assert engine.epochs_trained == 0
    assert optuna.load_study(study_name="tiny_tune", storage=f"sqlite:///{files / 'out' / 'optuna.db'}").trials == []


def test_narrow_space_keeps_to_the_best_region():
    space = [ParamRange("optim.lr", "float", 1e-5, 1.0, log=True), ParamRange("train.epochs", "int", 1, 100),
             ParamRange("train.batch_size", "categorical", choices=(16, 32))]
    narrowed = narrow_space(space, [{"optim.lr": 1e-3, "train.epochs": 10}, {"optim.lr": 1e-2, "train.epochs": 20}])
    lr, epochs, batch = narrowed
    span = math.log(1e-2) - math.log(1e-3)
    assert lr.low == pytest.approx(math.exp(math.log(1e-3) - 0.25 * span))
    assert lr.high == pytest.approx(math.exp(math.log(1e-2) + 0.25 * span))
    assert (epochs.low, epochs.high) == (7, 23) and batch == space[2]


def test_narrow_space_keeps_stepped_ranges_inside_the_users_range():
    dropout = ParamRange("model.dropout", "float", 0.0, 0.45, step=0.1)
    (narrowed,) = narrow_space([dropout], [{"model.dropout": 0.4}, {"model.dropout": 0.4}])
    assert (narrowed.low, narrowed.high) == (0.3, 0.4)  # not 0.5: above the user's 0.45
    batch = ParamRange("train.batch_size", "int", 16, 250, step=16)
    (narrowed,) = narrow_space([batch], [{"train.batch_size": 240}, {"train.batch_size": 240}])
    assert (narrowed.low, narrowed.high) == (224, 240)  # not 256
    # float error does not move a grid point: (0.3 - 0) / 0.1 is 2.9999999999999996
    (narrowed,) = narrow_space([replace(dropout, high=0.3)], [{"model.dropout": 0.1}, {"model.dropout": 0.2}])
    assert (narrowed.low, narrowed.high) == (0.0, 0.3)


def test_the_pruning_warm_up_protects_its_epochs():
    """Two finished trials read 0.5 and 0.6 at epochs 1-2; a third at 0.1 after epoch 1 is within the warm-up."""
    for warmup, pruned_after_epoch_1 in ((1, False), (0, True)):
        options = TuneOptions(trials=3, prune_warmup_epochs=warmup)
        study = optuna.create_study(direction="maximize", pruner=median_pruner(optuna, options))
        for value in (0.5, 0.6):
            trial = study.ask()
            trial.report(value, 1)
            trial.report(value, 2)
            study.tell(trial, value)
        trial = study.ask()
        trial.report(0.1, 1)
        assert bool(trial.should_prune()) is pruned_after_epoch_1
        trial.report(0.1, 2)
        assert trial.should_prune()  # after the warm-up it is judged as before


def test_bad_spaces_are_refused(files):
    values = {"optim": {"lr": 0.1}}
    bad = {"optim.lr: {type: float, low: 0.1, high: 0.01}": "expected numbers low < high",
           "optim.lr: {type: float, low: 0, high: 1, log: true}": "a log range needs low > 0",
           "optim.lr: {type: uniform, low: 0, high: 1}": "type: expected one of float, int, categorical",
           "optim.learning_rate: {type: float, low: 0.001, high: 0.1}": "unknown key 'learning_rate'",
           # a step Optuna refuses was once a ValueError / TypeError traceback at the first trial
           "optim.momentum: {type: float, low: 0.0, high: 0.5, step: 0}": r"optim.momentum.step: expected a positive number, got 0",
           "optim.momentum: {type: float, low: 0.0, high: 0.5, step: x}": r"optim.momentum.step: expected a positive number, got 'x'",
           "train.epochs: {type: int, low: 8, high: 64, step: -8}": r"train.epochs.step: expected a positive whole number",
           "train.epochs: {type: int, low: 8, high: 64, step: 0.5}": r"train.epochs.step: expected a positive whole number",
           # values a trial could draw that no recipe takes were found only when that trial started
           "train.batch_size: {type: categorical, choices: [16, 0]}": r"bad.yaml: train.batch_size: expected a positive number, got 0",
           "train.label_smoothing: {type: float, low: 0.0, high: 1.5}": r"bad.yaml: train.label_smoothing: expected a value in ",
           "train.epochs: {type: int, low: 0.5, high: 3}": r"train.epochs: an int range needs whole numbers, got low=0.5"}
    for text, message in bad.items():
        (files / "bad.yaml").write_text(text)
        with pytest.raises(CnnbenchError, match=message):
            load_space(files / "bad.yaml", values)
    with pytest.raises(CnnbenchError, match=rf"^{re.escape(str(files))}: cannot read it \(Is a directory\)"):
        load_space(files, values)  # --space given a folder was an IsADirectoryError traceback


def test_a_storage_optuna_cannot_open_is_a_one_line_error(files):
    """A plain path, an unknown dialect or a missing folder once surfaced as SQLAlchemy tracebacks."""
    for storage, reason in (("runs/optuna.db", "Could not parse SQLAlchemy URL"), ("nosuchdb://host/x", "Can't load plugin"),
                            (f"sqlite:///{files / 'missing' / 'optuna.db'}", "unable to open database file")):
        options = TuneOptions(trials=1, out=files / "out", storage=storage)
        with pytest.raises(CnnbenchError, match=rf"^--storage {re.escape(storage)}: .*{reason}.*sqlite:///PATH/optuna.db"):
            tune_recipe(files / "recipe.yaml", files / "space.yaml", options, trainer=FakeEpochEngine())


def test_a_storage_password_is_neither_printed_nor_written_into_the_best_recipe(files, monkeypatch):
    """A shared database URL with a password once went verbatim into best.yaml's header and the summary."""
    storage = "postgresql://bob:s3cret@db.example/optuna"
    with pytest.raises(CnnbenchError) as error:  # not reachable here: the message still names the URL
        options = TuneOptions(trials=1, out=files / "a", storage=storage.replace("postgresql", "nosuchdb"))
        tune_recipe(files / "recipe.yaml", files / "space.yaml", options, trainer=FakeEpochEngine())
    assert "s3cret" not in str(error.value) and "nosuchdb://bob:***@db.example/optuna" in str(error.value)
    # The same URL served by a local SQLite file, so the search runs and writes its best recipe.
    local = f"sqlite:///{files / 'optuna.db'}"
    real = {name: getattr(optuna, name) for name in ("create_study", "load_study")}
    for name, function in real.items():
        monkeypatch.setattr(optuna, name, lambda *args, _real=function, **kwargs: _real(*args, **{**kwargs, "storage": local}))
    result = tune_recipe(files / "recipe.yaml", files / "space.yaml", TuneOptions(trials=2, out=files / "b", storage=storage, seed=0),
                         trainer=FakeEpochEngine())
    assert result.storage == "postgresql://bob:***@db.example/optuna"
    assert "s3cret" not in result.best_recipe.read_text() and "bob:***@db.example" in result.best_recipe.read_text()


def test_tune_with_the_training_engine(tiny_zip, tmp_path):
    """Two tiny trials through `cnnbench tune` and the real training loop's per-epoch hook."""
    from cnnbench.cli import main

    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("train_per_class: 2", f"train_per_class: 4, path: {tiny_zip}")
                                          .replace("epochs: 6, batch_size: 16", "epochs: 2, batch_size: 8"))
    (tmp_path / "space.yaml").write_text("optim.lr: {type: float, low: 1.0e-3, high: 0.1, log: true}\n")
    out = tmp_path / "out"
    assert main(["tune", str(tmp_path / "recipe.yaml"), "--space", str(tmp_path / "space.yaml"), "--trials", "2",
                 "--out", str(out), "--quiet"]) == 0
    study = optuna.load_study(study_name="tiny_tune", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:  # both epochs reported: epoch 1 through the hook, epoch 2 from metrics.csv
        metrics = read_metrics(trial_dir(out, "tiny_tune", t.number))
        assert t.intermediate_values == pytest.approx(dict(zip([1, 2], metrics["val_top1"])), rel=1e-5)
        assert t.value == pytest.approx(read_summary(trial_dir(out, "tiny_tune", t.number))["best_val_top1"])
    tuned = load_recipe(out / "best.yaml")
    assert tuned.optim.lr == pytest.approx(study.best_trial.params["optim.lr"])
