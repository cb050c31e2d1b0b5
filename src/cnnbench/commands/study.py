"""``cnnbench study list|show|run`` and ``cnnbench tune``: the reports' experiments as one command."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    study = subparsers.add_parser("study", help="list, show and run the seed reports' experiments",
                                  description="The seed reports' experiments as recipes with their published numbers.")
    sub = study.add_subparsers(dest="study_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="the shipped studies")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="a study's source, settings and published numbers")
    p.add_argument("name", help="a study (see `cnnbench study list`)")
    p.set_defaults(func=_show)

    p = sub.add_parser("run", help="train every experiment (skipping finished runs, resuming interrupted ones) and write the report")
    p.add_argument("name", help="a study (see `cnnbench study list`)")
    p.add_argument("--data", metavar="PATH", help="dataset archive, folder, or folder of archives (default $CNNBENCH_DATA)")
    p.add_argument("--scale", type=float, default=1.0, metavar="S", help="multiply every epoch count by this for a quick pass (e.g. 0.1)")
    p.add_argument("--train-per-class", type=int, metavar="N", help="keep only the first N training images per class")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="runs per experiment (mean ± std over them)")
    p.add_argument("--out", type=Path, metavar="DIR", help="study folder (default runs/studies/NAME[-scaleS][-tpcN])")
    p.add_argument("--only", nargs="+", default=[], metavar="EXP", help="run only these experiments")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key in every experiment, e.g. train.device=cuda (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)

    tune = subparsers.add_parser("tune", help="search a recipe's hyper-parameters with Optuna",
                                 description="Coarse random search, then TPE around the best region, with "
                                             "median pruning on per-epoch val top-1; the best trial becomes a recipe file.")
    tune.add_argument("recipe", type=Path, help="the recipe to tune")
    tune.add_argument("--space", type=Path, required=True, help="search space YAML (see the README, section 'Tuning')")
    tune.add_argument("--trials", type=int, required=True, help="number of trials in all")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/optuna.db)")
    tune.add_argument("--study-name", help="Optuna study name (default: the recipe's name); reuse it to continue")
    tune.add_argument("--out", type=Path, help="folder for trials and the best recipe (default runs/tune/NAME)")
    tune.add_argument("--data", metavar="PATH", help="dataset location for every trial")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a recipe key in every trial (repeatable)")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    tune.set_defaults(func=_tune)


def _list(args: argparse.Namespace) -> int:
    from cnnbench.studies import list_studies, load_study

    for name in list_studies():
        study = load_study(name)
        print(f"{name:24s} {study.source:28s} {','.join(study.datasets):28s} {len(study.experiments):3d} runs  {study.title}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cnnbench.studies import load_study
    from cnnbench.studies.catalog import describe_study

    print(describe_study(load_study(args.name)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from cnnbench.studies import load_study
    from cnnbench.studies.runner import StudyOptions, engine_trainer, run_study

    options = StudyOptions(data=args.data, scale=args.scale, train_per_class=args.train_per_class, seeds=args.seeds,
                           out=args.out, only=tuple(args.only), overrides=tuple(args.overrides))
    result = run_study(load_study(args.name), options, trainer=engine_trainer(quiet=args.quiet))
    print(f"report: {result.report['html']}")
    for outcome in result.failed:
        print(f"failed: {outcome.planned.experiment} seed {outcome.planned.seed}: {outcome.message}")
    return 1 if result.failed else 0


def _tune(args: argparse.Namespace) -> int:
    from cnnbench.studies.tune import TuneOptions, tune_recipe

    options = TuneOptions(trials=args.trials, storage=args.storage, study_name=args.study_name, out=args.out,
                          data=args.data, overrides=tuple(args.overrides), quiet=args.quiet)
    result = tune_recipe(args.recipe, args.space, options)
    print(f"best trial {result.best_trial}: val top-1 {result.best_value:.2%} -> {result.best_recipe}")
    print(f"{result.trials} trials ({result.pruned} pruned) in study {result.study_name!r} at {result.storage}")
    return 0
