"""``run_study`` with a stand-in engine: planning, skip/resume, refusal, and the report's numbers."""

from __future__ import annotations

import csv
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from study_fakes import FakeEngine, epoch_row

from cnnbench.errors import CnnbenchError
from cnnbench.studies import load_study
from cnnbench.studies.reading import StudyConditions, _time_text, write_reading
from cnnbench.studies.results import collect_results
from cnnbench.studies.runner import StudyOptions, default_out, execute_plan, plan_study, run_study, scale_epochs


def quiet(_: str) -> None:
    pass


def size80(_) -> float:
    return 80.0  # training images per class, as in the shared train80 archive


def test_scale_epochs_shrinks_every_epoch_length():
    values = {"train": {"epochs": 20, "early_stopping": 5}, "schedule": {"name": "step", "step_epochs": 7, "warmup_epochs": 1.0}}
    scaled = scale_epochs(values, 0.1)
    assert scaled["train"] == {"epochs": 2, "early_stopping": 1}
    assert scaled["schedule"] == {"name": "step", "step_epochs": 1, "warmup_epochs": pytest.approx(0.1)}
    assert values["train"]["epochs"] == 20  # the input is not modified
    assert scale_epochs(values, 1.0) == values
    assert scale_epochs({"train": {"epochs": 100}}, 0.25)["train"]["epochs"] == 25
    # lengths left at their defaults are scaled where the schedule reads them (step_epochs 7, patience 3)
    assert scale_epochs({"schedule": {"name": "step"}}, 0.1)["schedule"] == {"name": "step", "step_epochs": 1}
    assert scale_epochs({"schedule": {"name": "plateau"}}, 0.5)["schedule"] == {"name": "plateau", "patience": 2}
    assert scale_epochs({"schedule": {"name": "cosine"}}, 0.1)["schedule"] == {"name": "cosine"}


def test_plan_applies_options_and_names_folders(tmp_path):
    study = load_study("skoltech22_cnns")
    options = StudyOptions(data="/data/tiny.zip", scale=0.1, train_per_class=20, seeds=2, only=("densenet161_lr1e-3",),
                           overrides=("train.device=cpu",))
    plan = plan_study(study, options, tmp_path)
    assert [(p.experiment, p.seed) for p in plan] == [("densenet161_lr1e-3", 0), ("densenet161_lr1e-3", 1)]
    r = plan[1].recipe
    assert (r.train.epochs, r.schedule.step_epochs, r.data.path, r.data.train_per_class, r.train.device) == (1, 1, "/data/tiny.zip", 20, "cpu")
    assert plan[1].run_dir == tmp_path / "runs" / "densenet161_lr1e-3" / "seed1"
    assert default_out(study, options).as_posix() == "runs/studies/skoltech22_cnns-scale0.1-tpc20"
    with pytest.raises(CnnbenchError, match="--only: study skoltech22_cnns has no experiment 'densenet'"):
        plan_study(study, StudyOptions(only=("densenet",)), tmp_path)
    with pytest.raises(CnnbenchError, match=r"--scale: expected a fraction in \(0, 1\]"):
        StudyOptions(scale=2.0)


def test_set_seed_with_several_seeds_plans_distinct_runs(tmp_path):
    study = load_study("cambridge18_baselines")
    options = StudyOptions(scale=0.1, seeds=3, out=tmp_path, only=("vgg_like",), overrides=("seed=5",))
    plan = plan_study(study, options, tmp_path)
    assert [(p.seed, p.run_dir.name) for p in plan] == [(5, "seed5"), (6, "seed6"), (7, "seed7")]
    engine = FakeEngine()
    result = run_study(study, options, trainer=engine, log=quiet, sizer=size80)
    assert engine.calls == [("vgg_like", 5, False), ("vgg_like", 6, False), ("vgg_like", 7, False)]
    row = next(r for r in json.loads((result.out / "report" / "results.json").read_text())["rows"]
               if r["experiment"] == "vgg_like")
    assert row["seeds"] == 3 and row["ours_val_top1_std"] > 0


def test_a_seed_that_is_not_a_number_is_a_one_line_error(tmp_path):
    """`--set seed=abc` (or a recipe's `seed: null`) once raised a TypeError adding the seed offset."""
    study = load_study("cambridge18_baselines")
    for value in ("abc", ""):
        with pytest.raises(CnnbenchError, match=r"vgg_like.yaml: seed: "):
            plan_study(study, StudyOptions(seeds=2, only=("vgg_like",), overrides=(f"seed={value}",)), tmp_path)


def test_a_plan_never_puts_two_runs_in_one_folder(tmp_path, monkeypatch):
    import cnnbench.studies.runner as runner

    study = load_study("cambridge18_baselines")
    same = runner.experiment_recipe(study, "vgg_like", StudyOptions())
    monkeypatch.setattr(runner, "experiment_recipe", lambda *args, **kwargs: same)
    with pytest.raises(CnnbenchError, match=r"the plan puts 2 runs into .*vgg_like/seed0"):
        plan_study(study, StudyOptions(seeds=2, only=("vgg_like",)), tmp_path)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """deepl18_vgg at scale 0.1 with 2 seeds, every run written by the stand-in engine."""
    out = tmp_path_factory.mktemp("deepl") / "study"
    engine = FakeEngine()
    options = StudyOptions(scale=0.1, seeds=2, out=out, only=("a_sgd_rui", "c_adam_rui_dropout", "f_adam_he_bn_l2", "modern"))
    result = run_study(load_study("deepl18_vgg"), options, trainer=engine, log=quiet, sizer=size80)
    return result, engine


def test_every_run_trains_once_with_scaled_epochs(finished_study):
    result, engine = finished_study
    assert len(engine.calls) == 4 * 2 and not result.failed
    epochs = {o.planned.experiment: o.planned.recipe.train.epochs for o in result.outcomes}
    assert epochs == {"a_sgd_rui": 2, "c_adam_rui_dropout": 2, "f_adam_he_bn_l2": 10, "modern": 2}


def test_report_files_exist_and_say_the_scale(finished_study):
    result, _ = finished_study
    report = result.out / "report"
    for name in ("report.html", "report.md", "published_vs_ours.csv", "results.json", "compare/compare.csv",
                 "compare/seeds.csv", "figures/published_vs_ours.png", "figures/bubbles_tiny-imagenet.png",
                 "figures/curves_tiny-imagenet.png", "figures/curves_modern.png", "figures/curves_f_adam_he_bn_l2.png"):
        assert (report / name).stat().st_size > 0, name
    markdown = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    for page in (markdown, html):
        assert "QUICK PASS at --scale 0.1" in page
        assert page.count("--scale 0.1") >= 1 + 7  # banner plus every figure caption
    assert html.count("data:image/png;base64,") == len(list((report / "figures").glob("*.png")))
    with open(report / "published_vs_ours.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["scale"] for r in rows} == {"0.1"}


def test_report_numbers_match_the_runs(finished_study):
    result, _ = finished_study
    with open(result.out / "report" / "published_vs_ours.csv", newline="") as f:
        rows = {r["experiment"]: r for r in csv.DictReader(f)}
    study = result.study
    assert len(rows) == 7  # every row of the study, finished or not
    for experiment, row in rows.items():
        if experiment not in ("a_sgd_rui", "c_adam_rui_dropout", "f_adam_he_bn_l2", "modern"):
            assert row["seeds"] == "0" and row["ours_val_top1"] == ""
            continue
        recipes = [o.planned.recipe for o in result.outcomes if o.planned.experiment == experiment]
        # final rows: the last epoch of each seed, as the stand-in engine wrote it
        finals = [epoch_row(r, r.train.epochs) for r in recipes]
        for metric in ("val_top1", "val_top5", "val_loss"):
            values = np.array([f[metric] for f in finals])
            assert float(row[f"ours_{metric}_mean"]) == pytest.approx(values.mean())
            assert float(row[f"ours_{metric}_std"]) == pytest.approx(values.std(ddof=1))
        assert row["seeds"] == "2"
        if experiment in study.published:
            published = study.published[experiment].values["val_top1"]
            assert float(row["published_val_top1"]) == pytest.approx(published)
            assert float(row["diff_val_top1"]) == pytest.approx(100 * (np.mean([f["val_top1"] for f in finals]) - published))
        else:
            assert row["published_val_top1"] == ""
    results = json.loads((result.out / "report" / "results.json").read_text())
    assert len(results["runs"]) == 8 and results["scale"] == 0.1
    assert results["reading"] in (result.out / "report" / "report.md").read_text()


def test_rerun_skips_finished_and_resumes_interrupted(tmp_path):
    study = load_study("cambridge18_baselines")
    options = StudyOptions(scale=0.1, out=tmp_path / "s", only=("simple_cnn", "vgg_like"))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during vgg_like, after 2 of its 4 epochs
        run_study(study, options, trainer=FakeEngine(stop_after={"vgg_like": 2}), log=quiet, sizer=size80)
    engine = FakeEngine()
    result = run_study(study, options, trainer=engine, log=quiet, sizer=size80)
    assert engine.calls == [("vgg_like", 0, True)]
    assert [o.status for o in result.outcomes] == ["skipped", "resumed"]
    with open(tmp_path / "s" / "runs" / "vgg_like" / "seed0" / "metrics.csv") as f:
        assert [int(float(r["epoch"])) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_a_folder_with_another_recipe_is_never_overwritten(tmp_path):
    study = load_study("cambridge18_baselines")
    only = ("logistic_regression",)
    execute_plan(plan_study(study, StudyOptions(scale=0.1, only=only), tmp_path), FakeEngine(), quiet)
    with pytest.raises(CnnbenchError, match=r"logistic_regression/seed0: holds a run of a different recipe \(train.epochs differs\)"):
        run_study(study, StudyOptions(scale=0.2, out=tmp_path, only=only), trainer=FakeEngine(), log=quiet, sizer=size80)


def test_a_folder_written_before_a_setting_existed_is_the_same_recipe(tmp_path):
    """A key a later cnnbench added (here augment.mix_prob) is missing from older recipe.yaml files;
    at its default the run is still the one planned: skipped, not refused or retrained."""
    study = load_study("cambridge18_baselines")
    only = ("logistic_regression",)
    execute_plan(plan_study(study, StudyOptions(scale=0.1, only=only), tmp_path), FakeEngine(), quiet)
    stored = tmp_path / "runs" / "logistic_regression" / "seed0" / "recipe.yaml"
    text = stored.read_text()
    assert "mix_prob: 1.0" in text
    stored.write_text("\n".join(line for line in text.splitlines() if "mix_prob" not in line))
    engine = FakeEngine()
    result = run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=only), trainer=engine, log=quiet, sizer=size80)
    assert engine.calls == [] and [o.status for o in result.outcomes] == ["skipped"]
    with pytest.raises(CnnbenchError, match=r"augment.mix_prob differs"):  # another value is another recipe
        run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=only, overrides=("augment.mix_prob=0.5",)),
                  trainer=FakeEngine(), log=quiet, sizer=size80)


def test_the_report_leaves_out_folders_trained_with_another_recipe(tmp_path):
    """The README's `--only modern --out <existing dir>`: an earlier --scale 0.1 folder is not reported as scale 1."""
    study = load_study("cambridge18_baselines")
    run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=("vgg_like",)), trainer=FakeEngine(), log=quiet, sizer=size80)
    run_study(study, StudyOptions(out=tmp_path, only=("modern",)), trainer=FakeEngine(), log=quiet, sizer=size80)
    report = tmp_path / "report"
    rows = {r["experiment"]: r for r in json.loads((report / "results.json").read_text())["rows"]}
    stale = tmp_path / "runs" / "vgg_like" / "seed0"
    assert rows["vgg_like"]["seeds"] == 0 and rows["vgg_like"]["ours_val_top1"] == ""
    assert rows["vgg_like"]["left_out"] == f"left out: {stale} holds another recipe (train.epochs differs)"
    assert rows["modern"]["seeds"] == 1 and rows["modern"]["left_out"] == ""
    markdown = (report / "report.md").read_text()
    assert "Run folders left out" in markdown and f"VGG-like: left out: {stale} holds another recipe" in markdown
    assert [r["experiment"] for r in json.loads((report / "results.json").read_text())["runs"]] == ["modern"]


def test_the_report_counts_the_seeds_of_an_earlier_larger_seeds(tmp_path):
    """`--seeds 3` for one experiment, then `--only` another with the default one seed: the report
    once counted n=1 for the first, leaving out two finished seeds without a word."""
    study = load_study("cambridge18_baselines")
    run_study(study, StudyOptions(scale=0.1, seeds=3, out=tmp_path, only=("vgg_like",)), trainer=FakeEngine(),
              log=quiet, sizer=size80)
    engine = FakeEngine()
    run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=("simple_cnn",)), trainer=engine, log=quiet, sizer=size80)
    assert engine.calls == [("simple_cnn", 0, False)]  # trains only what was asked
    rows = {r["experiment"]: r for r in json.loads((tmp_path / "report" / "results.json").read_text())["rows"]}
    assert rows["vgg_like"]["seeds"] == 3 and rows["simple_cnn"]["seeds"] == 1


def test_a_new_report_removes_the_files_of_the_previous_one(tmp_path):
    """An earlier report's compare/seeds.csv (n=2) and the curves of a row now left out once stayed
    beside a page that said n=1 and showed no such row."""
    study = load_study("cambridge18_baselines")
    run_study(study, StudyOptions(scale=0.1, seeds=2, out=tmp_path, only=("vgg_like", "simple_cnn")),
              trainer=FakeEngine(), log=quiet, sizer=size80)
    report = tmp_path / "report"
    assert (report / "compare" / "seeds.csv").exists() and (report / "figures" / "curves_vgg_like.png").exists()
    for experiment in ("vgg_like", "simple_cnn"):
        shutil.rmtree(tmp_path / "runs" / experiment / "seed1")
    run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=("vgg_like", "simple_cnn")), trainer=FakeEngine(),
              log=quiet, sizer=size80)
    assert not (report / "compare" / "seeds.csv").exists()  # one seed per recipe: no seed groups
    assert {p.name for p in (report / "compare").iterdir()} == {"compare.csv", "compare.md", "compare.json"}
    run_study(study, StudyOptions(out=tmp_path, only=("modern",)), trainer=FakeEngine(), log=quiet, sizer=size80)
    figures = {p.stem for p in (report / "figures").iterdir()}
    assert figures == {"bubbles_tiny-imagenet", "curves_tiny-imagenet", "curves_modern"}  # the scale-0.1 rows are left out
    assert (report / "report.html").read_text().count("data:image/png;base64,") == len(figures)


def test_the_table_says_which_published_numbers_are_bounds_or_approximate(tmp_path):
    """skoltech22's AlexNet 'never reached 20%' once read as a plain published 20.00 in the page's table."""
    study = load_study("skoltech22_cnns")
    run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=("alexnet_lr1e-3",)), trainer=FakeEngine(), log=quiet, sizer=size80)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| compared at | published is | published top-1 % |" in markdown
    assert "| AlexNet (+FC 1000->200), lr 0.001, step | tiny-imagenet | 2/20 | best | < | 20.00 |" in markdown
    assert "| M1, augmentation set 1, lr 0.001 | tiny-imagenet | 2/20 | best | ~ | 22.00 |" in markdown
    assert "| DenseNet-161, lr 0.001, step, 8 epochs | tiny-imagenet | 1/8 | best | = | 51.00 |" in markdown


def test_epochs_come_from_the_runs_own_summary(tmp_path):
    study = load_study("cambridge18_baselines")
    engine = FakeEngine(early_stop={"vgg_like": 3})  # early stopping ended it after 3 of its 40 epochs
    result = run_study(study, StudyOptions(out=tmp_path, only=("vgg_like",)), trainer=engine, log=quiet, sizer=size80)
    rows = {r["experiment"]: r for r in json.loads((result.out / "report" / "results.json").read_text())["rows"]}
    assert rows["vgg_like"]["epochs"] == "3/40"
    assert "it ran 3 of the report's 40 epochs" in json.loads((result.out / "report" / "results.json").read_text())["reading"]


def test_curves_of_seeds_that_ran_different_lengths_average_the_common_epochs(tmp_path):
    from cnnbench.studies.study_report import _mean_curves

    study = load_study("cambridge18_baselines")
    options = StudyOptions(scale=0.1, seeds=2, out=tmp_path, only=("vgg_like",))
    engine = FakeEngine(early_stop={("vgg_like", 1): 3})  # seed 1 stopped early: 3 of its 4 epochs
    result = run_study(study, options, trainer=engine, log=quiet, sizer=size80)
    vgg = next(r for r in collect_results(study, plan_study(study, options, tmp_path), {}) if r.experiment == "vgg_like")
    curves = _mean_curves(vgg)
    recipes = [o.planned.recipe for o in result.outcomes]
    assert curves["epoch"].tolist() == [1, 2, 3]
    assert curves["val_top1"] == pytest.approx([np.mean([epoch_row(r, e)["val_top1"] for r in recipes]) for e in (1, 2, 3)])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert ("VGG-like: train and val curves, mean over 2 seeds for epochs 1-3, the epochs every seed ran "
            "(the longest ran 4)") in markdown


def test_a_failing_run_is_reported_and_the_rest_go_on(tmp_path):
    class Failing(FakeEngine):
        def __call__(self, recipe, run_dir, resume):
            if recipe.name == "simple_cnn":
                raise CnnbenchError("weights file not found: put resnet18.pth in ~/.cache/torch")
            super().__call__(recipe, run_dir, resume)

    study = load_study("cambridge18_baselines")
    result = run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=("simple_cnn", "vgg_like")), trainer=Failing(), log=quiet, sizer=size80)
    assert [o.planned.experiment for o in result.failed] == ["simple_cnn"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Runs that failed" in markdown and "weights file not found" in markdown
    assert "Not run or not finished: Multiclass logistic regression, Fully connected (one hidden layer), Simple CNN, modern (cnnbench)." in markdown


def test_reading_is_built_from_the_numbers(finished_study):
    result, _ = finished_study
    from cnnbench.studies.runner import plan_study as plan

    results = collect_results(result.study, plan(result.study, result.options, result.out), {})
    text = write_reading(results, StudyConditions(scale=0.1, train_per_class={"tiny-imagenet": 80.0}))
    diffs = [100 * r.difference() for r in results if not r.ours]
    assert f"on average {abs(np.mean(diffs)):.1f} points" in text
    assert "every run trained 0.1 of its epochs" in text
    assert "on tiny-imagenet we trained on 80 images per class against the report's 500 (16% of the data)" in text
    worst = max((r for r in results if not r.ours), key=lambda r: abs(r.difference()))
    assert f"The largest gap is {worst.label}" in text
    modern = next(r for r in results if r.ours)
    stat = modern.stat("val_top1")
    assert f"Our modern recipe reached {100 * stat.mean:.1f}% ± {100 * stat.std:.1f} (2 seeds)" in text
    # Beside the best published row it names the data gap; beside our best reproduction (same data) it does not.
    best_published = max((r for r in results if not r.ours), key=lambda r: r.published.values["val_top1"])
    assert f"({best_published.label}, {100 * best_published.published.values['val_top1']:.1f}%) " \
           "(the report trained on 500 images per class, ours on 80)" in text
    best_ours = max((r for r in results if not r.ours), key=lambda r: r.stat("val_top1").mean)
    mean, std = (100 * v for v in (best_ours.stat("val_top1").mean, best_ours.stat("val_top1").std))
    assert f"our best reproduction under the same conditions ({best_ours.label}, {mean:.1f}% ± {std:.1f} (2 seeds))" in text
    # ... and how their training times compare (the same epochs need not be the same compute)
    ours_s, theirs_s = (r.summary_stat("seconds").mean for r in (modern, best_ours))
    assert (ours_s, theirs_s) == (4.0, 20.0)  # the fake engine takes 2 s per epoch: 2 epochs against 10
    assert "(2 seeds)) in 20% of its training time (4 s against 20 s)." in text
    # Different numbers, different paragraph: full scale and full data drop those sentences.
    other = write_reading(results, StudyConditions(scale=1.0, train_per_class={"tiny-imagenet": 500.0}))
    assert "trained 0.1 of its epochs" not in other and "images per class" not in other
    assert "the best published row" in other
    assert not math.isnan(worst.difference())


def test_reading_sets_from_scratch_recipes_beside_from_scratch_rows(tmp_path):
    # aalto19 has rows from scratch (Table 2) and fine-tuned from ImageNet weights (Table 3); our
    # from-scratch recipe is measured against the first kind, the fine-tuned one against the second.
    study = load_study("aalto19_transfer")
    only = ("squeezenet11_64", "resnet18_64", "resnet18_pre224_10ep", "modern_scratch", "modern")
    result = run_study(study, StudyOptions(scale=0.1, out=tmp_path, only=only), trainer=FakeEngine(), log=quiet,
                       sizer=size80)
    results = collect_results(result.study, plan_study(result.study, result.options, result.out), {})
    by_name = {r.experiment: r for r in results}
    assert [n for n in only if by_name[n].pretrained] == ["resnet18_pre224_10ep", "modern"]
    text = write_reading(results, StudyConditions(scale=0.1, train_per_class={"tiny-imagenet": 80.0}))
    scratch = max((by_name[n] for n in ("squeezenet11_64", "resnet18_64")), key=lambda r: r.stat("val_top1").mean)
    sentence = next(s for s in text.split(". Our ") if s.startswith("modern_scratch recipe"))
    assert "the best published row trained from scratch (ResNet-18, 64x64 RGB, 40 epochs, 23.7%)" in sentence
    assert f"our best reproduction under the same conditions ({scratch.label}," in sentence
    sentence = next(s for s in text.split(". Our ") if s.startswith("modern recipe"))
    assert "the best published row fine-tuned from pretrained weights (ResNet-18 pretrained, 224x224, 10 epochs, 62.5%)" \
        in sentence
    assert "our best reproduction under the same conditions (ResNet-18 pretrained, 224x224, 10 epochs," in sentence


@pytest.mark.parametrize("ours,theirs,text", [
    (6.8, 277.0, " in 2.5% of its training time (7 s against 5 min)"),
    (2000.0, 600.0, " in 3.3x its training time (33 min against 10 min)"),
    (100.0, 98.0, " in about the same training time (100 s against 98 s)"),
    (9000.0, 36000.0, " in 25% of its training time (2.5 h against 10.0 h)"),
    (float("nan"), 30.0, ""),
])
def test_modern_is_set_beside_the_training_time_of_the_row_it_is_compared_with(ours, theirs, text):
    def result(seconds):
        return SimpleNamespace(summary_stat=lambda key: SimpleNamespace(mean=seconds) if key == "seconds" else None)
    assert _time_text(result(ours), result(theirs)) == text
