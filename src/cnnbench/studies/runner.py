"""``cnnbench study run``: train every experiment of a study, then write its report.

The plan is one run folder per (experiment, seed) under ``OUT/runs/<experiment>/seed<k>``.
Running a study again skips the runs that finished with the same recipe and resumes the ones
that were interrupted (a ``last`` checkpoint and no finished summary), so a study can be
stopped with Ctrl-C and continued with the same command. A run folder holding a *different*
recipe (say, another ``--scale``) is never overwritten: the study stops and names the key.

``--scale`` multiplies every length measured in epochs (epochs, step interval, warm-up,
patience) for a quick pass, and every page of the report says so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.runs import read_recipe, read_summary
from cnnbench.studies.catalog import Study
from cnnbench.train.config import Recipe, apply_overrides, build_config

RUNS_DIR = "runs"
REPORT_DIR = "report"
DEFAULT_ROOT = Path("runs") / "studies"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
# Recipe keys that may differ between a finished run folder and the plan without making it a
# different experiment: free text only.
IGNORED_KEYS = ("notes",)
# The epoch-measured length each schedule reads (scaled by --scale even when left at its default).
SCHEDULE_LENGTHS = {"step": "step_epochs", "plateau": "patience"}


@dataclass(frozen=True)
class StudyOptions:
    """What ``cnnbench study run`` was asked for."""

    data: str | None = None
    """Dataset location for every experiment (an archive, a folder, or a folder of archives)."""
    scale: float = 1.0
    """Multiply every epoch count by this (0 < scale <= 1) for a quick pass."""
    train_per_class: int | None = None
    """Keep only the first N training images per class."""
    seeds: int = 1
    """Runs per experiment, with seeds recipe.seed, recipe.seed + 1, ... (recipe.seed after --set)."""
    out: Path | None = None
    """Study folder; default runs/studies/<name>[-scale<s>][-tpc<n>]."""
    only: tuple[str, ...] = ()
    """Run only these experiments (the report still shows every published row)."""
    overrides: tuple[str, ...] = ()
    """``--set key=value`` applied to every experiment (e.g. train.device=cuda)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise CnnbenchError(f"--scale: expected a fraction in (0, 1], got {self.scale!r}")
        if self.seeds < 1:
            raise CnnbenchError(f"--seeds: expected a positive count, got {self.seeds!r}")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise CnnbenchError(f"--train-per-class: expected a positive count, got {self.train_per_class!r}")


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the plan."""

    experiment: str
    seed: int
    recipe: Recipe
    run_dir: Path


@dataclass
class RunOutcome:
    """What happened to a planned run: finished earlier, trained, resumed, or failed (with why)."""

    planned: PlannedRun
    status: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class StudyRun:
    """The outcome of ``run_study``: every run and the report files."""

    study: Study
    options: StudyOptions
    out: Path
    outcomes: list[RunOutcome]
    train_per_class: dict[str, float] = field(default_factory=dict)
    """Dataset -> training images per class the runs used (for the reading)."""
    report: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if not o.ok]


class Trainer(Protocol):
    """Trains one recipe into ``run_dir`` (``resume``: continue the run folder's last checkpoint)."""

    def __call__(self, recipe: Recipe, run_dir: Path, resume: bool) -> None: ...


def default_out(study: Study, options: StudyOptions) -> Path:
    """runs/studies/<name>, with the scale and subset in the name so quick passes never mix with full ones."""
    name = study.name
    if options.scale != 1.0:
        name += f"-scale{options.scale:g}"
    if options.train_per_class is not None:
        name += f"-tpc{options.train_per_class}"
    return DEFAULT_ROOT / name


def scale_epochs(values: dict[str, Any], scale: float) -> dict[str, Any]:
    """A copy of a recipe mapping with every epoch-measured length multiplied by ``scale``.

    Counts are rounded and kept at 1 or more, so a 20-epoch run at scale 0.1 trains 2 epochs and
    a divide-by-10-every-7-epochs schedule divides every epoch; warm-up stays a fraction. The
    length the schedule uses is scaled also when the recipe leaves it at its default (a ``step``
    schedule's ``step_epochs``, a ``plateau`` schedule's ``patience``); a default the schedule
    does not read stays as it is (scaling it would change nothing but the stored recipe).
    """
    values = copy.deepcopy(values)
    if scale == 1.0:
        return values

    def shrink(count: int) -> int:
        return max(1, int(math.floor(count * scale + 0.5)))

    defaults = Recipe()
    train = values.setdefault("train", {})
    schedule = values.setdefault("schedule", {})
    full_epochs = train.get("epochs", defaults.train.epochs)
    train["epochs"] = shrink(full_epochs)
    used = SCHEDULE_LENGTHS.get(schedule.get("name", defaults.schedule.name))
    if used is not None and schedule.get(used) is None:
        schedule[used] = getattr(defaults.schedule, used)
    for section, key in (("schedule", "step_epochs"), ("schedule", "patience"), ("train", "early_stopping")):
        node = values[section]
        if node.get(key) is not None:
            node[key] = shrink(node[key])
    if schedule.get("warmup_epochs"):
        schedule["warmup_epochs"] = schedule["warmup_epochs"] * scale
    if schedule.get("cycles"):
        schedule["cycles"] = min(schedule["cycles"], train["epochs"])
    return values


def experiment_recipe(study: Study, experiment: str, options: StudyOptions, seed_offset: int = 0) -> Recipe:
    """The recipe of one experiment with the study options applied (scale, data, subset, seed, --set)."""
    values = scale_epochs(study.recipe_values(experiment), options.scale)
    data = values.setdefault("data", {})
    if options.data is not None:
        data["path"] = str(options.data)
    if options.train_per_class is not None:
        data["train_per_class"] = options.train_per_class
    values["name"] = experiment
    apply_overrides(values, list(options.overrides))
    # After --set: with --set seed=5 --seeds 3 the runs are seeds 5, 6, 7, not three runs of seed 5.
    seed = values.get("seed", 0)
    if isinstance(seed, int) and not isinstance(seed, bool):  # any other value is build_config's to refuse
        values["seed"] = seed + seed_offset
    try:
        return build_config(Recipe, values)
    except CnnbenchError as exc:
        raise CnnbenchError(f"{study.recipe_path(experiment)}: {exc}") from None


def plan_study(study: Study, options: StudyOptions, out: Path) -> list[PlannedRun]:
    """Every (experiment, seed) run to do, in report order."""
    unknown = [e for e in options.only if e not in study.experiments]
    if unknown:
        raise CnnbenchError(f"--only: study {study.name} has no experiment {unknown[0]!r}; "
                            f"known: {', '.join(study.experiments)}")
    chosen = [e for e in study.experiments if not options.only or e in options.only]
    plan = []
    for experiment in chosen:
        for k in range(options.seeds):
            recipe = experiment_recipe(study, experiment, options, seed_offset=k)
            plan.append(PlannedRun(experiment, recipe.seed, recipe, out / RUNS_DIR / experiment / f"seed{recipe.seed}"))
    folders = [run.run_dir for run in plan]
    repeated = next((f for f in folders if folders.count(f) > 1), None)
    if repeated is not None:  # one folder would train once and be counted as several seeds
        raise CnnbenchError(f"the plan puts {folders.count(repeated)} runs into {repeated}; each run needs its own folder")
    return plan


def recipe_differences(planned: Any, stored: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between the planned and a stored recipe mapping.

    ``run_state`` refuses to train into a folder that differs; the study report leaves such a
    folder out of its numbers (``results.collect_results``).
    """
    if isinstance(planned, dict) and isinstance(stored, dict):
        out = []
        for key in sorted(set(planned) | set(stored)):
            if key in IGNORED_KEYS and not prefix:
                continue
            out += recipe_differences(planned.get(key), stored.get(key), f"{prefix}{key}.")
        return out
    if isinstance(planned, (list, tuple)) and isinstance(stored, (list, tuple)):
        same = len(planned) == len(stored) and not any(recipe_differences(a, b) for a, b in zip(planned, stored))
        return [] if same else [prefix.rstrip(".")]
    return [] if planned == stored else [prefix.rstrip(".")]


def run_state(run: PlannedRun) -> str:
    """``new``, ``finished``, ``diverged`` or ``interrupted``; a folder holding another recipe is an error."""
    folder = run.run_dir
    if not folder.exists() or not any(folder.iterdir()):
        return "new"
    stored = read_recipe(folder)
    if not stored:
        raise CnnbenchError(f"{folder}: not empty but holds no recipe.yaml, so it is not a run folder; "
                            f"choose another --out or remove it")
    differing = recipe_differences(run.recipe.to_dict(), stored)
    if differing:
        raise CnnbenchError(
            f"{folder}: holds a run of a different recipe ({differing[0]} differs); "
            f"choose another --out or remove that folder")
    status = read_summary(folder).get("status") if (folder / "summary.json").exists() else None
    if status in ("finished", "diverged"):
        return status
    if (folder / LAST_CHECKPOINT).exists():
        return "interrupted"
    raise CnnbenchError(f"{folder}: an unfinished run without a checkpoint to resume from; remove the folder to start it again")


def engine_trainer(quiet: bool = False) -> Trainer:
    """The training engine (``cnnbench.train.run.train_run``) as a ``Trainer``.

    A run stopped by Ctrl-C or SIGTERM has written its checkpoint; the study stops there too
    (KeyboardInterrupt), and the same command later resumes it.
    """
    from cnnbench.train.run import train_run  # torch is imported here, not at CLI start-up

    def train(recipe: Recipe, run_dir: Path, resume: bool) -> None:
        result = train_run(None if resume else recipe, run_dir, resume=resume, quiet=quiet)
        if result.status == "stopped":
            raise KeyboardInterrupt

    return train


def dataset_train_per_class(recipe: Recipe) -> float:
    """Training images per class the recipe's data section gives (reads the prepared cache)."""
    from cnnbench.data import load_dataset

    d = recipe.data
    ds = load_dataset(d.name, data=d.path, grayscale=d.grayscale, train_per_class=d.train_per_class,
                      val_split=d.val_split, skip_bad=d.skip_bad, holdout=d.holdout)
    return len(ds.split("train").labels) / ds.num_classes


def execute_plan(plan: list[PlannedRun], trainer: Trainer, log: Callable[[str], None]) -> list[RunOutcome]:
    """Train (or skip, or resume) every planned run; a user error fails that run and the next one starts."""
    outcomes = []
    for i, run in enumerate(plan, start=1):
        where = f"[{i}/{len(plan)}] {run.experiment} seed {run.seed}"
        state = run_state(run)
        if state == "finished":
            log(f"{where}: finished earlier, skipped ({run.run_dir})")
            outcomes.append(RunOutcome(run, "skipped"))
            continue
        if state == "diverged":  # resuming would replay the same divergence from the last good checkpoint
            message = f"diverged earlier (non-finite loss, see {run.run_dir / 'summary.json'}); remove the folder to retry"
            log(f"{where}: {message}")
            outcomes.append(RunOutcome(run, "failed", message))
            continue
        log(f"{where}: {'resuming' if state == 'interrupted' else 'training'} -> {run.run_dir}")
        try:
            trainer(run.recipe, run.run_dir, resume=state == "interrupted")
        except CnnbenchError as exc:
            log(f"{where}: failed: {exc}")
            outcomes.append(RunOutcome(run, "failed", str(exc)))
            continue
        outcomes.append(RunOutcome(run, "resumed" if state == "interrupted" else "trained"))
    return outcomes


def run_study(study: Study, options: StudyOptions, trainer: Trainer | None = None,
              log: Callable[[str], None] = print,
              sizer: Callable[[Recipe], float] = dataset_train_per_class) -> StudyRun:
    """Run (or continue) every experiment of ``study``, then write the study report.

    ``sizer`` gives the training images per class of a recipe's data (the reading compares it
    with what the report trained on).
    """
    from cnnbench.studies.study_report import write_study_report

    out = Path(options.out) if options.out is not None else default_out(study, options)
    plan = plan_study(study, options, out)
    outcomes = execute_plan(plan, trainer or engine_trainer(), log)
    result = StudyRun(study, options, out, outcomes)
    for outcome in outcomes:
        dataset = outcome.planned.recipe.data.name
        if outcome.ok and dataset not in result.train_per_class:
            result.train_per_class[dataset] = sizer(outcome.planned.recipe)
    # The report covers every experiment of the study folder, also those --only left out this time,
    # and every seed trained into it, also those of an earlier, larger --seeds.
    everything = replace(options, only=())
    result.report = write_study_report(result, plan_study(study, replace(everything, seeds=seeds_in(study, everything, out)), out))
    return result


def seeds_in(study: Study, options: StudyOptions, out: Path) -> int:
    """``options.seeds``, or more where an experiment's folder holds the run folders of more seeds
    (seed{s}, seed{s+1}, ... from the recipe's seed s, as ``--seeds`` names them)."""
    most = options.seeds
    for experiment in study.experiments:
        first = experiment_recipe(study, experiment, options).seed
        count = options.seeds
        while (out / RUNS_DIR / experiment / f"seed{first + count}").is_dir():
            count += 1
        most = max(most, count)
    return most
