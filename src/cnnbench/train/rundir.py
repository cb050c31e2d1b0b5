"""The run folder (docs/design.md): what produced a result, saved next to it.

    recipe.yaml  env.json  classes.json  metrics.csv  tb/  checkpoints/{last,best}.pt  summary.json
    env-resume-<epoch>.json (one per resume: the resumed process's environment)

Every file is written to a temporary name in the same folder, fsynced and moved into place with
``os.replace`` (``cnnbench.files.write_atomic``), so a crash never leaves a half-written
file that looks complete, nor a stray temporary file. A folder that
already holds a run is never reused silently: ``--resume`` continues it, ``--overwrite``
replaces it (only once the new recipe has built), anything else is an error.
"""

from __future__ import annotations

import csv
import io
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cnnbench.errors import CnnbenchError
# The project's one atomic writer (temp file, fsync, os.replace, temp removed on failure).
from cnnbench.evaluate.runs import write_json as write_json_atomic
from cnnbench.files import make_folder, write_text as write_text_atomic

METRICS_COLUMNS = ("epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                   "lr", "epoch_seconds", "images_per_s")
# best_*: the epoch train.monitor chose (best.pt) and its val metrics; val_*: the last evaluation.
SUMMARY_COLUMNS = ("run", "name", "model", "dataset", "seed", "params", "mflops", "epochs", "monitor", "best_epoch",
                   "best_val_top1", "best_val_top5", "best_val_loss", "val_top1", "val_top5", "val_loss", "train_top1", "train_loss", "seconds",
                   "images_per_s", "recipe_hash", "status")
RUN_MARKER = "recipe.yaml"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Check ``run_dir`` can take a new run (or holds the run to resume), creating it if new.

    Returns whether it holds an old run that ``--overwrite`` replaces: that one is removed only by
    ``clear_old_run``, once the new recipe has built its data, model and engine, so a recipe that
    fails to build never costs the old run.
    """
    run_dir = Path(run_dir)
    holds_run = (run_dir / RUN_MARKER).exists()
    if resume:
        if not holds_run:
            raise CnnbenchError(f"{run_dir}: nothing to resume (no {RUN_MARKER}); start a run with --out {run_dir}")
        return False
    if run_dir.exists() and not run_dir.is_dir():
        raise CnnbenchError(f"{run_dir}: is a file, not a folder; give --out a new folder or a run folder")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise CnnbenchError(f"{run_dir}: folder exists and is not empty; use --resume {run_dir} to continue "
                                "the run in it, --overwrite to replace it, or another --out")
        if not holds_run:
            raise CnnbenchError(f"{run_dir}: --overwrite only replaces a run folder (one with {RUN_MARKER}); "
                                "this folder holds something else")
        return True
    make_folder(run_dir, "the run folder")
    return False


def missing_folders(run_dir: Path) -> list[Path]:
    """``run_dir`` and those of its parents that do not exist yet (``prepare_run_dir`` creates them), deepest first."""
    run_dir = Path(run_dir).absolute()
    return [p for p in (run_dir, *run_dir.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that a run which stopped before writing anything created."""
    for folder in folders:
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            return


def clear_old_run(run_dir: Path) -> None:
    """Empty a run folder ``prepare_run_dir`` found to hold the run ``--overwrite`` replaces."""
    for entry in Path(run_dir).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_recipe(run_dir: Path, recipe_dict: dict) -> None:
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe_dict, sort_keys=False))


def write_classes(run_dir: Path, classes: list) -> None:
    """classes.json: [{"id", "name"}] in label order."""
    write_json_atomic(run_dir / "classes.json", [{"id": c.id, "name": c.name} for c in classes])


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """metrics.csv from all epoch rows so far (rewritten whole, so a resume never duplicates rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in METRICS_COLUMNS})
    write_text_atomic(run_dir / "metrics.csv", buffer.getvalue())


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json: one flat row (SUMMARY_COLUMNS first, then any extra keys)."""
    row = {k: summary.get(k) for k in SUMMARY_COLUMNS}
    row.update({k: v for k, v in summary.items() if k not in row})
    write_json_atomic(run_dir / "summary.json", row)


def _git(*args: str) -> str | None:
    """Output of a git command run in the cnnbench source tree, or None outside a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """The source tree's commit and whether it had uncommitted changes (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": None if status is None else bool(status)}


def environment_path(run_dir: Path, resumed_at_epoch: int | None) -> Path:
    """env.json for the process that started the run; a resumed process writes its own
    env-resume-<epoch>.json beside it (-2, -3, ... for more resumes in one epoch), so the
    original provenance is never overwritten."""
    if resumed_at_epoch is None:
        return run_dir / "env.json"
    path, n = run_dir / f"env-resume-{resumed_at_epoch}.json", 2
    while path.exists():
        path, n = run_dir / f"env-resume-{resumed_at_epoch}-{n}.json", n + 1
    return path


def environment(device: str, precision: str, manifest_hash: str, world_size: int, extra: dict | None = None) -> dict:
    """env.json: versions, git commit, device, threads, dataset manifest hash, command line."""
    import numpy
    import torch
    import torchvision

    from cnnbench import __version__

    env = {
        "cnnbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__, **git_state(),
        "platform": platform.platform(), "hostname": platform.node(), "device": device, "precision": precision,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
        "world_size": world_size, "dataset_manifest_hash": manifest_hash, "command": sys.argv,
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
    env.update(extra or {})
    return env
