"""``cnnbench tune``: a coarse random search, then a finer TPE search around the best region.

This is the search the Deepl-18 report proposed ("broadly searching a parameter space then
progressing to more fine ... searches"): the first ``coarse_fraction`` of the trials sample the
whole space at random (``optuna.samplers.RandomSampler``); the rest use TPE
(``optuna.samplers.TPESampler``) on a space narrowed to the region of the best coarse trials.
Every trial is a normal training run; the training loop reports val top-1 after each epoch and
``optuna.pruners.MedianPruner`` stops trials that fall below the median of earlier trials at the
same epoch. Trials live in an Optuna storage (SQLite by default, or any database URL Optuna
accepts), so several machines running the same command share one search. The best trial is
written as a recipe file.

A search space is a YAML mapping from dotted recipe keys to distributions::

    optim.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
    optim.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
    train.batch_size: {type: categorical, choices: [64, 128, 256]}
    model.dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import yaml

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.runs import read_metrics, read_summary
from cnnbench.files import write_text
from cnnbench.studies.catalog import read_yaml_mapping
from cnnbench.train.config import Recipe, apply_overrides, build_config, load_recipe_dict

KINDS = ("float", "int", "categorical")
SPACE_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
              "categorical": ("type", "choices")}
DEFAULT_ROOT = Path("runs") / "tune"
BEST_RECIPE = "best.yaml"


@dataclass(frozen=True)
class ParamRange:
    """One searched recipe key and its distribution."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()


def _check_range(path: Path, key: str, spec: dict[str, Any]) -> ParamRange:
    kind = spec.get("type")
    if kind not in KINDS:
        raise CnnbenchError(f"{path}: {key}.type: expected one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(spec) - set(SPACE_KEYS[kind]))
    if unknown:
        raise CnnbenchError(f"{path}: {key}: unknown keys {', '.join(unknown)} for a {kind} range; valid: {', '.join(SPACE_KEYS[kind])}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise CnnbenchError(f"{path}: {key}.choices: expected a non-empty list")
        return ParamRange(key, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise CnnbenchError(f"{path}: {key}: expected numbers low < high, got low={low!r}, high={high!r}")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise CnnbenchError(f"{path}: {key}: an int range needs whole numbers, got low={low!r}, high={high!r}")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0
                             or (kind == "int" and step != int(step))):
        raise CnnbenchError(f"{path}: {key}.step: expected a positive {'whole ' if kind == 'int' else ''}number, got {step!r}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise CnnbenchError(f"{path}: {key}: a log range needs low > 0, got {low!r}")
    if log and step is not None:
        raise CnnbenchError(f"{path}: {key}: step and log cannot be combined (Optuna's rule)")
    return ParamRange(key, kind, float(low), float(high), log, step)


def load_space(path: Path, recipe_values: dict[str, Any]) -> list[ParamRange]:
    """Read a search-space YAML; every key must be a valid recipe key and every value it can take a
    valid value (checked by building a recipe with each choice and each end of each range)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "a mapping of recipe keys to ranges, e.g. optim.lr: {type: float, low: 1e-4, high: 0.1, log: true}")
    space = []
    for key, spec in raw.items():
        if not isinstance(spec, dict):
            raise CnnbenchError(f"{path}: {key}: expected a mapping with 'type'")
        space.append(_check_range(path, str(key), spec))
    # Every choice and both ends of every range must make a valid recipe: a trial that draws an
    # invalid one fails only when it starts, possibly hours into the search.
    for p in space:
        for value in p.choices if p.kind == "categorical" else (p.low, p.high):
            build_recipe(recipe_values, [], where=str(path), params={p.key: int(value) if p.kind == "int" else value})
    return space


def build_recipe(values: dict[str, Any], overrides: list[str], where: str,
                 params: dict[str, Any] | None = None) -> Recipe:
    """The base recipe mapping with ``key=value`` overrides and searched ``params`` set, validated.

    ``params`` are set as Python values, not through ``--set`` text: PyYAML would read a sampled
    ``1e-05`` back as a string (YAML 1.1 floats need a dot).
    """
    data = apply_overrides(copy.deepcopy(values), overrides)
    for key, value in (params or {}).items():
        node = data
        *sections, last = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    try:
        return build_config(Recipe, data)
    except CnnbenchError as exc:
        raise CnnbenchError(f"{where}: {exc}") from None


def suggest(trial, space: list[ParamRange]) -> dict[str, Any]:
    """Ask the trial for one value per searched key."""
    params = {}
    for p in space:
        if p.kind == "categorical":
            params[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            params[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            params[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
    return params


def narrow_space(space: list[ParamRange], best: list[dict[str, Any]], margin: float = 0.25) -> list[ParamRange]:
    """Numeric ranges shrunk to the span of the best trials' values, widened by ``margin`` of that span.

    Spans are measured in log space for log ranges; the result stays inside the original range.
    Categorical keys keep every choice (Optuna cannot change a categorical space within a study;
    TPE itself then favours the choices of the good trials).
    """
    if not best:
        return space
    out = []
    for p in space:
        values = [t[p.key] for t in best if p.key in t]
        if p.kind == "categorical" or not values:
            out.append(p)
            continue
        to, back = (math.log, math.exp) if p.log else (float, float)
        lo, hi = to(min(values)), to(max(values))
        pad = max(hi - lo, 0.05 * (to(p.high) - to(p.low))) * margin
        low, high = max(p.low, back(lo - pad)), min(p.high, back(hi + pad))
        if p.kind == "int":
            low, high = math.floor(low), math.ceil(high)
        if p.step is not None:  # keep the grid low + k * step, and high at or below the user's high
            low = _grid_point(p, low, math.floor)
            high = min(_grid_point(p, high, math.ceil), _grid_point(p, p.high, math.floor))
        out.append(replace(p, low=low, high=high) if low < high else p)
    return out


def _grid_point(p: ParamRange, value: float, snap: Callable[[float], int]) -> float:
    """``p.low + k * p.step`` with k = snap((value - p.low) / step), tolerant of float error and rounded
    (0.3 / 0.1 is 2.9999999999999996, and 0.1 * 6 is 0.6000000000000001)."""
    steps = (value - p.low) / p.step
    k = round(steps) if abs(steps - round(steps)) < 1e-9 else snap(steps)
    return round(p.low + k * p.step, 12)


@dataclass(frozen=True)
class TuneOptions:
    """What ``cnnbench tune`` was asked for."""

    trials: int
    storage: str | None = None
    study_name: str | None = None
    out: Path | None = None
    data: str | None = None
    overrides: tuple[str, ...] = ()
    quiet: bool = False
    coarse_fraction: float = 0.4
    """Share of the trials sampled at random over the whole space before TPE takes over."""
    best_fraction: float = 0.25
    """The best share of finished trials that defines the region the fine search narrows to."""
    prune_startup_trials: int = 2
    """Trials that run to the end before the median pruner compares against them."""
    prune_warmup_epochs: int = 1
    """Epochs of every trial that are never pruned."""
    seed: int | None = None
    """Sampler seed (None: different on every machine sharing a search)."""

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise CnnbenchError(f"--trials: expected a positive count, got {self.trials!r}")
        if not 0.0 < self.coarse_fraction <= 1.0:
            raise CnnbenchError(f"coarse_fraction: expected a fraction in (0, 1], got {self.coarse_fraction!r}")


@dataclass(frozen=True)
class TuneResult:
    """The best trial and where it was written."""

    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_recipe: Path
    storage: str
    study_name: str
    trials: int
    pruned: int


class EpochTrainer(Protocol):
    """Trains a recipe into run_dir, calling ``on_epoch(row)`` with each metrics.csv row as epochs end."""

    def __call__(self, recipe: Recipe, run_dir: Path, on_epoch: Callable[[dict[str, Any]], None]) -> None: ...


def engine_epoch_trainer(quiet: bool = False) -> EpochTrainer:
    """The training engine, with epoch rows fed to ``on_epoch`` through its ``after_step`` hook.

    ``train_run``'s hook runs after every optimiser step with the engine and the run's ``Progress``; a row that
    appeared in ``progress.history`` since the last call is an epoch that just ended. So a trial
    is judged one step into the next epoch (the final epoch is reported from metrics.csv after
    the run); an exception raised by ``on_epoch`` (``optuna.TrialPruned``) ends the run there.
    """
    from cnnbench.train.run import train_run

    def train(recipe: Recipe, run_dir: Path, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        seen = 0

        def after_step(engine, progress) -> None:
            nonlocal seen
            for row in progress.history[seen:]:
                seen += 1
                on_epoch(row)

        result = train_run(recipe, run_dir, quiet=quiet, after_step=after_step)
        if result.status == "stopped":
            raise KeyboardInterrupt

    return train


def trial_dir(out: Path, study_name: str, number: int) -> Path:
    """Where a trial's run folder goes (named by study too: several searches may share an --out)."""
    return out / "trials" / f"{study_name}-{number:04d}"


def _objective(optuna, base: dict[str, Any], space: list[ParamRange], options: TuneOptions, out: Path,
               trainer: EpochTrainer) -> Callable:
    def objective(trial) -> float:
        params = suggest(trial, space)
        recipe = build_recipe(base, list(options.overrides), where=f"trial {trial.number}", params=params)
        run_dir = trial_dir(out, trial.study.study_name, trial.number)
        reported: set[int] = set()

        def report(row: dict[str, Any]) -> bool:
            value = row.get("val_top1")
            epoch = int(row["epoch"])
            if value is None or (isinstance(value, float) and math.isnan(value)) or epoch in reported:
                return False  # an epoch without a val pass (train.eval_every > 1), or one already told
            reported.add(epoch)
            trial.report(float(value), epoch)
            return True

        def on_epoch(row: dict[str, Any]) -> None:
            if report(row) and trial.should_prune():
                raise optuna.TrialPruned(f"val top-1 {row['val_top1']:.2%} at epoch {int(row['epoch'])} "
                                         f"is below the median of earlier trials")

        trainer(recipe, run_dir, on_epoch)
        metrics = read_metrics(run_dir)
        for i in range(len(metrics["epoch"])):  # epochs the hook did not see (the last one)
            report({k: float(v[i]) for k, v in metrics.items()})
        return float(read_summary(run_dir)["best_val_top1"])

    return objective


def _best_trials(study, fraction: float) -> list[dict[str, Any]]:
    import optuna

    done = sorted((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
                  key=lambda t: t.value, reverse=True)
    keep = max(2, math.ceil(len(done) * fraction))
    return [t.params for t in done[:keep]]


def median_pruner(optuna, options: TuneOptions):
    """Optuna's ``MedianPruner`` with the warm-up counted in epochs.

    Trials report 1-based epochs as steps, and Optuna prunes from ``step == n_warmup_steps`` on,
    so the first ``prune_warmup_epochs`` epochs are protected by a warm-up of one step more.
    """
    return optuna.pruners.MedianPruner(n_startup_trials=options.prune_startup_trials,
                                       n_warmup_steps=options.prune_warmup_epochs + 1)


def write_best_recipe(base: dict[str, Any], options: TuneOptions, params: dict[str, Any], header: str, path: Path) -> Path:
    """The tuned recipe (base + --set + best params) as a YAML file with where it came from on top."""
    recipe = build_recipe(base, list(options.overrides), where=str(path), params=params)
    values = recipe.to_dict()
    values["notes"] = (values.get("notes") or "").strip() + f" Tuned: {header}."
    return write_text(path, f"# {header}\n" + yaml.safe_dump(values, sort_keys=False))


def shown_url(storage: str) -> str:
    """The storage URL as printed and written into best.yaml, with its password (if any) masked:
    a postgresql://user:password@host/db URL shared by several machines must not end up in a recipe."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL: nothing to mask
        return storage


def open_study(optuna, name: str, storage: str):
    """Create the study, or load it to continue; a storage Optuna cannot open is a one-line error."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    except (SQLAlchemyError, ValueError) as exc:  # an unparsable URL, an unknown dialect, a missing folder
        raise CnnbenchError(f"--storage {shown_url(storage)}: {str(exc).splitlines()[0]} (expected a database URL Optuna "
                            "can open, e.g. sqlite:///PATH/optuna.db in an existing folder)") from None


def _refuse_stale_trials(out: Path, name: str, study, storage: str) -> None:
    """Trial folders numbered past the study's trials belong to an earlier search whose storage is
    gone (a deleted optuna.db, another --storage): each new trial would fail on its folder and be
    stored as failed. The folders are listed before the trials are counted, so a folder that
    another machine sharing the search just made is always counted as known."""
    numbers = {}
    for folder in (out / "trials").glob(f"{name}-*"):
        suffix = folder.name[len(name) + 1:]
        if suffix.isdigit():
            numbers[int(suffix)] = folder
    known = len(study.get_trials(deepcopy=False))
    stale = sorted(n for n in numbers if n >= known)
    if stale:
        raise CnnbenchError(f"{numbers[stale[0]]}: a trial folder of an earlier search of study {name!r} that "
                            f"{shown_url(storage)} does not hold ({len(stale)} such folders); remove them, "
                            "or choose another --out or --study-name")


def tune_recipe(recipe_path: Path, space_path: Path, options: TuneOptions,
                trainer: EpochTrainer | None = None) -> TuneResult:
    """Run (or join, or continue) the search until the study holds ``options.trials`` trials."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise CnnbenchError("cnnbench tune needs Optuna: pip install 'cnnbench[tune]' (or pip install optuna)") from None
    base = load_recipe_dict(recipe_path)
    if options.data is not None:
        base.setdefault("data", {})["path"] = str(options.data)
    build_recipe(base, list(options.overrides), where=str(recipe_path))
    space = load_space(space_path, base)
    name = options.study_name or base.get("name") or Path(recipe_path).stem
    out = Path(options.out) if options.out is not None else DEFAULT_ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    storage = options.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    pruner = median_pruner(optuna, options)
    coarse = max(1, round(options.trials * options.coarse_fraction))
    trainer = trainer or engine_epoch_trainer(options.quiet)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(optuna, name, storage)
    _refuse_stale_trials(out, name, study, storage)
    while len(study.trials) < options.trials:
        # The phase follows the trials already in storage, so machines sharing a search agree on it.
        if len(study.trials) < coarse:
            sampler, phase_space = optuna.samplers.RandomSampler(seed=_seed(options, study)), space
        else:
            sampler = optuna.samplers.TPESampler(seed=_seed(options, study), n_startup_trials=0)
            phase_space = narrow_space(space, _best_trials(study, options.best_fraction))
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        # A trial that fails with a user-facing error (say, a diverging learning rate) is recorded
        # as FAIL and the search goes on; any other exception is a bug and stops it.
        study.optimize(_objective(optuna, base, phase_space, options, out, trainer), n_trials=1,
                       catch=(CnnbenchError,))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise CnnbenchError(f"study {name!r} in {shown_url(storage)}: no trial finished (all {len(study.trials)} were pruned or failed)")
    best = study.best_trial
    header = f"cnnbench tune: trial {best.number} of study {name!r} ({shown_url(storage)}), best val top-1 {best.value:.4f}"
    path = write_best_recipe(base, options, best.params, header, out / BEST_RECIPE)
    pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    return TuneResult(best.number, float(best.value), dict(best.params), path, shown_url(storage), name,
                      len(study.trials), pruned)


def _seed(options: TuneOptions, study) -> int | None:
    # A fresh sampler per trial: offset the seed by the trial count so trials do not repeat.
    return None if options.seed is None else options.seed + len(study.trials)
