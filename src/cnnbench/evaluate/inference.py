"""From a run folder to log-probabilities: load the checkpoint, rebuild the data view, predict.

``load_scorer`` loads a run's model from a checkpoint and checks it against the run folder
(checkpoint present, class list and class count consistent). ``DatasetViews`` rebuilds the
dataset the recipe trained on (or another one at ``--data`` whose classes must match), and
``split_log_probs`` runs the model over a split in order, with optional flip TTA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnbench.data import BatchLoader, BatchPipeline, Dataset, load_dataset
from cnnbench.errors import CnnbenchError
from cnnbench.evaluate.runs import ClassEntry, read_classes, read_recipe
from cnnbench.train.config import Recipe
from cnnbench.train.device import Precision, resolve_device, resolve_precision
from cnnbench.train.native import denormals_flushed

TTA_MODES = ("none", "flip")


@dataclass
class Scorer:
    """A model loaded from one checkpoint of a run, with what is needed to feed it."""

    run_dir: Path
    checkpoint: str
    """Which checkpoint: best, last or snapshot-<k>."""
    model: torch.nn.Module
    recipe: Recipe
    classes: list[ClassEntry]

    @property
    def input_size(self) -> int:
        """The square side the model is fed (the recipe's resize, else the model's native size)."""
        return self.recipe.data.input_size or int(self.model.cnnbench_cfg["input_size"])


def load_scorer(run_dir: Path, which: str = "best", device: torch.device | None = None) -> Scorer:
    """Load a run's model from ``checkpoints/<which>.pt`` in eval mode, checked against the run folder.

    ``load_run`` builds the model the checkpoint names; a checkpoint copied in from another run
    would load fine there, so its model and classes are compared with the folder's own
    ``recipe.yaml`` and ``classes.json`` here.
    """
    from cnnbench.train.checkpoint import checkpoint_path, load_run

    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, which)
    try:
        model, recipe, checkpoint_classes = load_run(run_dir, which=which)
    except (RuntimeError, KeyError) as exc:  # state dict does not fit the model it names, or keys missing
        reason = str(exc).strip().splitlines()[0][:160]
        raise CnnbenchError(f"{path}: weights do not load into the model the checkpoint names ({reason})") from None
    classes = read_classes(run_dir)
    folder_model = read_recipe(run_dir).get("model", {}).get("name")
    if folder_model is not None and folder_model != recipe.model.name:
        raise CnnbenchError(f"{path}: checkpoint of model {recipe.model.name!r}, but the run folder trained "
                            f"{folder_model!r} (recipe.yaml); was it copied from another run?")
    ids = [c.id for c in classes]
    if list(checkpoint_classes) != ids:
        raise CnnbenchError(f"{path}: the checkpoint has {len(checkpoint_classes)} classes, "
                            f"{run_dir / 'classes.json'} lists {len(ids)}"
                            + ("" if len(ids) != len(checkpoint_classes) else " (different ids)"))
    model.eval()
    if device is not None:
        model.to(device)
    return Scorer(run_dir, which, model, recipe, classes)


class DatasetViews:
    """Datasets as recipes see them, loaded once per distinct (data settings, location).

    ``load(recipe)`` is the view the model trained on (its normalisation statistics);
    ``load(recipe, data)`` reads another location the same way. Members of an ensemble usually
    share one view, and loading is a cached memory-map, so this only avoids repeated work.
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], Dataset] = {}

    def load(self, recipe: Recipe, data: str | Path | None = None) -> Dataset:
        d = recipe.data
        location = data if data is not None else d.path
        key = (repr(d), str(location))
        if key not in self._loaded:
            self._loaded[key] = load_dataset(d.name, data=location, grayscale=d.grayscale,
                                             train_per_class=d.train_per_class, val_split=d.val_split,
                                             skip_bad=d.skip_bad, holdout=d.holdout)
        return self._loaded[key]


def check_same_classes(dataset: Dataset, classes: list[ClassEntry], where: str) -> None:
    """Refuse a dataset whose class ids (in label order) are not the run's."""
    ids = [c.id for c in dataset.classes]
    expected = [c.id for c in classes]
    if ids == expected:
        return
    if len(ids) != len(expected):
        raise CnnbenchError(f"{where}: the dataset has {len(ids)} classes, the model was trained on {len(expected)}")
    first = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
    raise CnnbenchError(f"{where}: class {first} is {ids[first]!r} in the dataset but {expected[first]!r} in the "
                        f"run; evaluation needs the same classes in the same order")


def eval_pipeline(scorer: Scorer, stats: dict) -> BatchPipeline:
    """The training pipeline without augmentation: convert, resize to the model's input, normalise."""
    return BatchPipeline(normalize=scorer.recipe.data.normalize, stats=stats, input_size=scorer.input_size,
                         augment=None, channels_last=scorer.recipe.train.channels_last)


def resolve_runtime(device: str, recipe: Recipe) -> tuple[torch.device, Precision]:
    """The device (auto: cuda, mps, cpu) and the recipe's precision on it."""
    resolved = resolve_device(device)
    return resolved, Precision(resolve_precision(recipe.train.precision, resolved), resolved)


@torch.inference_mode()
def batch_log_probs(model: torch.nn.Module, pipeline: BatchPipeline, images: torch.Tensor, precision: Precision,
                    tta: str = "none") -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (B, K) log-probabilities; flip TTA averages the two softmaxes."""
    views = [images] if tta == "none" else [images, images.flip(-1)]  # flip before normalising (pixel_mean)
    out = []
    for view in views:
        with precision.autocast():
            logits = model(pipeline(view))
        out.append(torch.log_softmax(logits.float(), dim=1))
    if len(out) == 1:
        return out[0]
    return torch.logsumexp(torch.stack(out), dim=0) - np.log(len(out))


def split_log_probs(scorer: Scorer, pipeline: BatchPipeline, split, device: torch.device, precision: Precision,
                    tta: str = "none", batch_size: int = 256) -> np.ndarray:
    """Log-probabilities (N, K) for every image of ``split``, in the split's order."""
    if tta not in TTA_MODES:
        raise CnnbenchError(f"--tta: expected one of {', '.join(TTA_MODES)}, got {tta!r}")
    loader = BatchLoader(split, batch_size=batch_size, shuffle=False, drop_last=False, device=str(device))
    with denormals_flushed(device):  # as in training: subnormal weights (a checkpoint from elsewhere) stay fast
        chunks = [batch_log_probs(scorer.model, pipeline, images, precision, tta).cpu().numpy() for images, _ in loader]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(scorer.classes)), dtype=np.float32)
