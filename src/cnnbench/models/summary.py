"""What a model costs: parameters, FLOPs per image (``torch.utils.flop_counter``), layer tables.

FLOPs count a multiply-add as 2 (the flop counter's convention; torchvision's published
"GFLOPS" count multiply-adds, i.e. half of ours). Listing the zoo builds each model on the meta
device, where tensors have shapes but no storage, so counting VGG-16 at 224 px costs no
compute; rows are also cached under $CNNBENCH_HOME/models/, keyed by the model code's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnbench.errors import CnnbenchError
from cnnbench.models.base import count_parameters, without_batchnorm
from cnnbench.models.registry import create_model, get_model_info, list_models


def _outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def count_flops(model: nn.Module, input_size: int | None = None, in_channels: int | None = None) -> int:
    """Forward FLOPs for one image in eval mode (no auxiliary heads); leaves the model as it was."""
    cfg = getattr(model, "cnnbench_cfg", {})
    size = input_size or cfg["input_size"]
    channels = in_channels or cfg["in_channels"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def training_flops(model: nn.Module, input_size: int, in_channels: int) -> int:
    """Forward + backward FLOPs per image in train mode (auxiliary heads included) — what a
    training step costs, for FLOP utilisation. Run it on a meta-device model: it updates
    BatchNorm statistics and gradients."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        outputs = _outputs(model(torch.zeros(2, in_channels, input_size, input_size,
                                             device=next(model.parameters()).device)))
        sum(o.float().sum() for o in outputs).backward()
    return counter.get_total_flops() // 2


def build_on_meta(name: str, **kwargs: Any) -> nn.Module:
    """``create_model`` with shapes only (no memory, no init cost)."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _cache_file() -> Path:
    from cnnbench.data.sources import cnnbench_home

    return cnnbench_home() / "models" / "describe-cache.json"


def _code_fingerprint() -> str:
    """Hash of this package's source and of torch's and torchvision's versions: a cached row is
    stale once any builder changes, ours or torchvision's."""
    import torchvision

    digest = hashlib.sha256(f"{torch.__version__} {torchvision.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def describe_model(name: str, input_size: int | None = None, num_classes: int | None = None,
                   in_channels: int | None = None, **options: Any) -> dict[str, Any]:
    """One flat row: name, family, params, mflops (forward, per image), sizes, source, description.

    A size the model cannot take gives a row with ``params``/``mflops`` None and the reason in
    ``note`` instead of raising, so a listing shows every model."""
    info = get_model_info(name)
    row: dict[str, Any] = dict(
        name=name, family=info.family, params=None, mflops=None,
        input_size=input_size or info.input_size, native_input_size=info.input_size,
        min_input_size=info.min_input_size, pretrained=info.pretrained_available, source=info.source,
        description=info.description, note="")
    try:
        model = build_on_meta(name, input_size=input_size, num_classes=num_classes, in_channels=in_channels, **options)
    except CnnbenchError as exc:
        row["note"] = str(exc)
        return row
    row["params"] = count_parameters(model)
    row["mflops"] = round(count_flops(without_batchnorm(model)) / 1e6, 2)
    return row


def describe_models(input_size: int | None = None, num_classes: int | None = None, in_channels: int | None = None,
                    names: list[str] | None = None, use_cache: bool = True, **options: Any) -> list[dict[str, Any]]:
    """``describe_model`` for every registered model (options apply to the models that take them)."""
    cache_path = _cache_file()
    fingerprint = _code_fingerprint()
    cache: dict[str, Any] = {}
    if use_cache and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}  # a damaged cache is only a slower listing; it is rewritten below
        if cache.get("fingerprint") != fingerprint:
            cache = {}
    rows_cache = cache.setdefault("rows", {})
    rows = []
    for name in names or list_models():
        own = {k: v for k, v in options.items() if k in get_model_info(name).options}
        key = json.dumps([name, input_size, num_classes, in_channels, sorted(own.items())])
        if key not in rows_cache:
            rows_cache[key] = describe_model(name, input_size, num_classes, in_channels, **own)
        rows.append(rows_cache[key])
    if use_cache:
        cache["fingerprint"] = fingerprint
        _write_json_atomically(cache_path, cache)
    return rows


def _write_json_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def layer_summary(model: nn.Module, input_size: int | None = None, in_channels: int | None = None,
                  depth: int = 2) -> list[dict[str, Any]]:
    """Rows (name, type, output shape, params) for the modules ``depth`` levels down (and
    shallower leaves), in the order the forward pass runs them (eval mode, one image)."""
    cfg = getattr(model, "cnnbench_cfg", {})
    size = input_size or cfg["input_size"]
    channels = in_channels or cfg["in_channels"]
    rows: list[dict[str, Any]] = []
    hooks = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        if level == depth or (0 < level < depth and not any(True for _ in module.children())):
            def record(mod, args, out, name=name):
                first = _outputs(out)[0]
                rows.append(dict(name=name, type=type(mod).__name__, output=list(first.shape[1:]),
                                 params=count_parameters(mod)))
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return rows
