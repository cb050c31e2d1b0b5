"""ImageNet-1k weights through torchvision's weights API, or from a local state-dict file.

The checkpoint is torchvision's own file (same name, same place: ``$TORCH_HOME/hub/checkpoints``,
i.e. ``torch.hub.get_dir()/checkpoints``), so a cache filled by plain torchvision is reused.
When it is missing we try torchvision's URL once; offline, the error names the file expected and
the folder to put it in. A local ``weights`` file must hold a torchvision-layout state dict (as
``torchvision.models.<name>().state_dict()`` saves it) — or a dict with it under ``model`` or
``state_dict``. Everything is read with ``torch.load(weights_only=True)``.

We use each model's ``IMAGENET1K_V1`` weights: they exist for every torchvision model here and
are the ones the reports (2018-2022) fine-tuned; mean/std come from the same weights' transforms.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnbench.errors import CnnbenchError

WEIGHTS_TAG = "IMAGENET1K_V1"


@dataclass
class PretrainedWeights:
    """A loaded checkpoint and the preprocessing it was trained with."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    source: str
    """The file the weights came from."""
    mean: list[float]
    std: list[float]


def torchvision_weights(torchvision_name: str):
    """torchvision's weights enum entry (``IMAGENET1K_V1``) for a model."""
    import torchvision

    return torchvision.models.get_model_weights(torchvision_name)[WEIGHTS_TAG]


def cache_path(torchvision_name: str) -> Path:
    """Where torchvision keeps (and we look for) the checkpoint file."""
    url = torchvision_weights(torchvision_name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def download_weights(url: str, destination: Path) -> None:
    """Fetch ``url`` into ``destination`` (torch.hub writes a temp file and renames it, and checks
    the hash prefix torchvision puts in its file names)."""
    match = re.search(r"-([a-f0-9]+)\.", destination.name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), hash_prefix=match.group(1) if match else None,
                                   progress=False)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, with clear errors for a missing or unreadable one."""
    if not path.is_file():
        raise CnnbenchError(f"{path}: weights file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; all mean "not a state dict"
        raise CnnbenchError(f"{path}: not a loadable state dict ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0][:120]})") from None
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CnnbenchError(f"{path}: expected a state dict (parameter name -> tensor)")
    return data


def load_pretrained(torchvision_name: str, weights: str | os.PathLike | None = None) -> PretrainedWeights:
    """ImageNet-1k weights for ``torchvision_name``: from ``weights`` if given, else the torch hub cache."""
    entry = torchvision_weights(torchvision_name)
    preset = entry.transforms()
    if weights is not None:
        path = Path(weights).expanduser()
    else:
        path = cache_path(torchvision_name)
        if not path.is_file():
            try:
                download_weights(entry.url, path)
            except OSError as exc:  # URLError is an OSError: offline, DNS, refused, ...
                raise CnnbenchError(
                    f"ImageNet weights for {torchvision_name} are not cached and cannot be downloaded "
                    f"({exc.__class__.__name__}): expected {path} — copy {os.path.basename(path)} "
                    f"(from {entry.url}) into {path.parent}, or pass a local file in the recipe: "
                    f"model.weights: FILE (--set model.weights=FILE)") from None
    return PretrainedWeights(state_dict=read_state_dict(path), source=str(path),
                             mean=list(preset.mean), std=list(preset.std))


# torchvision's DenseNet checkpoints keep the module names of 2017 ('denselayer1.norm.1.weight'
# for 'denselayer1.norm1.weight'); torchvision's densenet._load_state_dict renames them so.
LEGACY_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def torchvision_layout(state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's keys as the model names them: torchvision's legacy DenseNet keys renamed,
    and BatchNorm's ``num_batches_tracked`` counters (absent from files written before PyTorch
    0.4.1, which ``load_state_dict`` tolerates the same way) taken from the model."""
    out = {}
    for key, value in state_dict.items():
        match = LEGACY_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in out:
            out[key] = value
    return out


def load_into(model: torch.nn.Module, weights: PretrainedWeights) -> None:
    """Strict ``load_state_dict`` with a one-line error naming the file and the mismatches."""
    own = model.state_dict()
    state = torchvision_layout(weights.state_dict, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise CnnbenchError(f"{weights.source}: does not match the torchvision layout of this model: {'; '.join(parts)}")
    model.load_state_dict(state)
