"""Checkpoints: plain dicts of tensors and Python scalars, written atomically, read safely.

Everything a checkpoint holds loads with ``torch.load(path, weights_only=True)``: state dicts,
numbers, strings, lists, and the random-number-generator states stored *as tensors* (torch's
own states are ByteTensors; numpy's and Python's are converted to int64 tensors here) — no
pickled objects, so opening a checkpoint cannot execute code.

Keys (docs/design.md): model, optimizer, scheduler, scaler, ema, rng, epoch, loader, recipe,
classes, model_name, num_classes, best; plus model_kwargs (what ``create_model`` was called
with), step, epoch_sums (the running train sums of an interrupted epoch), history (the
metrics rows so far), bad_epochs (early-stopping counter), complete (False mid-epoch), and
dataset_manifest_hash, device, precision (what the run trained on; resume checks the first).
``rng`` is rank 0's states, and ``rng["ranks"]`` every rank's (one row per rank; one row in a
single process), from which each rank resumes its own.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnbench.errors import CnnbenchError
from cnnbench.files import write_atomic
from cnnbench.train.distributed import gather_to_all

CHECKPOINT_DIR = "checkpoints"
WHICH = ("best", "last")


# --------------------------------------------------------------------------- RNG states as tensors
def capture_rng_state(augment_generator: torch.Generator | None = None) -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python RNG states, and the augmentation
    generator's, as tensors."""
    np_state = np.random.get_state()  # ('MT19937', keys uint32[624], pos, has_gauss, cached_gaussian)
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_meta": torch.tensor([py_version], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if augment_generator is not None:
        state["augment"] = augment_generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], augment_generator: torch.Generator | None = None) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    meta = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), meta[0], meta[1],
                         float(state["numpy_gauss"][0])))
    gauss = float(state["python_gauss"][0])
    random.setstate((int(state["python_meta"][0]), tuple(state["python"].tolist()), None if gauss != gauss else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if augment_generator is not None and "augment" in state:
        augment_generator.set_state(state["augment"].cpu())


def gather_rng_states(augment_generator: torch.Generator) -> dict[str, Any]:
    """Every rank's ``capture_rng_state``, each tensor stacked by rank (a collective: every rank
    joins). Stored as ``rng["ranks"]`` so that each rank resumes its own streams."""
    state = capture_rng_state(augment_generator)
    return {k: [gather_to_all(s) for s in v] if isinstance(v, list) else gather_to_all(v) for k, v in state.items()}


def rank_rng_state(rng: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """Rank ``rank``'s states from a checkpoint's ``rng`` for ``restore_rng_state``; None when they
    were saved by another number of processes (or by none of them: the oldest checkpoints).
    Checkpoints from before ``rng["ranks"]`` kept only the augmentation generator per rank
    (``augment_ranks``); their ranks all drew rank 0's global streams, which ``rng`` holds."""
    # Each row is cloned: torch's set_state reads a view with a storage offset (every row but the
    # first) wrongly, and crashes (torch 2.15).
    per_rank = rng.get("ranks")
    if per_rank is not None:
        if len(per_rank["torch"]) != world_size:
            return None
        return {k: [s[rank].clone() for s in v] if isinstance(v, list) else v[rank].clone() for k, v in per_rank.items()}
    augment = rng.get("augment_ranks")
    if augment is None or len(augment) != world_size:
        return None
    return dict(rng, augment=augment[rank].clone())


# --------------------------------------------------------------------------- files
def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, os.replace.
    A crash mid-write leaves the previous checkpoint untouched."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    return write_atomic(Path(path), write)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing or unreadable file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise CnnbenchError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CnnbenchError(f"{path}: not a readable cnnbench checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from None


def checkpoint_path(run_dir: str | Path, which: str) -> Path:
    """RUN_DIR/checkpoints/<which>.pt (which: best, last, or a snapshot name such as snapshot-1)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """``(model, recipe, classes)`` from a run folder, ready for evaluation.

    The model is built with ``create_model`` exactly as training built it, loaded with the
    checkpoint's weights (the EMA weights when the run kept an average — those are what the
    run evaluated), put in eval mode on ``device``. ``recipe`` is the run's ``Recipe``;
    ``classes`` the class ids in label order.
    """
    from cnnbench.models import create_model
    from cnnbench.models.base import freeze_backbone
    from cnnbench.train.config import load_recipe

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnbenchError(f"{run_dir}: run folder not found")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        have = sorted(p.stem for p in (run_dir / CHECKPOINT_DIR).glob("*.pt"))
        raise CnnbenchError(f"{path}: no {which!r} checkpoint in this run folder"
                            + (f" (have: {', '.join(have)})" if have else " (it holds no checkpoints)"))
    ckpt = load_checkpoint(path)
    recipe = load_recipe(values=ckpt["recipe"])
    # The checkpoint holds every weight, so pretrained weights need not be found again.
    model = create_model(ckpt["model_name"], **dict(ckpt["model_kwargs"], pretrained=False, weights=None))
    if recipe.model.pretrained and recipe.model.finetune == "head":
        freeze_backbone(model)
    weights = ema_weights(ckpt["ema"]) if ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(weights)
    model.eval().to(device)
    return model, recipe, list(ckpt["classes"])


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model state dict inside an ``AveragedModel`` state dict (keys 'module.*')."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}
