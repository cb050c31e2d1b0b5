"""The model registry: ``@register_model`` builders, ``create_model``, ``list_models``.

Adding a model is one decorated function (torchvision's and timm's ``@register_model``); the
registry records where the architecture comes from and which input sizes it takes, and tests
iterate it, so a new model is tested the moment it is registered.

Builders are called as ``builder(num_classes=, in_channels=, input_size=, pretrained=,
**options)`` where ``pretrained`` is ``None`` or a ``PretrainedWeights`` (only for models with
``torchvision_name``). ``create_model`` resolves defaults, refuses input sizes a model cannot
take (probing a copy built on the meta device, which costs no memory or compute), loads
weights, builds, and applies the init scheme.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from cnnbench.errors import CnnbenchError
from cnnbench.files import load_yaml


def parse_options(items: list[str], where: str) -> dict[str, Any]:
    """Builder options from ``KEY=VALUE`` strings (values parsed as YAML: ``stem=small``,
    ``dropout=0.2``); ``where`` names the flag or setting in the one-line error."""
    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CnnbenchError(f"{where} {item!r}: expected KEY=VALUE, e.g. stem=small")
        options[key.strip()] = load_yaml(raw) if raw.strip() else None
    return options


STEMS = ("imagenet", "small")
RESNET_STEMS = STEMS + ("small_pool",)
"""The ResNet families also take ``small_pool``: the small stem's 3x3 stride-1 conv with the ImageNet
stem's max-pool kept, so the residual stages see S/2 maps (4x the ImageNet stem's FLOPs, a quarter
of the small stem's)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture."""

    name: str
    builder: Callable[..., Any] = field(repr=False)
    family: str
    source: str
    """Where the architecture comes from: a paper, or a report in shared/seeds and its table."""
    description: str
    """One line: the layers, in the source's words where possible."""
    input_size: int
    """Native input size: what the source fed it (224 for ImageNet models, 64 for Tiny ImageNet nets)."""
    min_input_size: int
    """Smallest square input the default options accept in train mode (tests check it is exact)."""
    in_channels: int = 3
    num_classes: int = 1000
    options: dict[str, str] = field(default_factory=dict)
    """Builder options and what they do (e.g. stem, dropout)."""
    torchvision_name: str | None = None
    """Set when ImageNet-1k weights exist through torchvision's weights API."""

    @property
    def pretrained_available(self) -> bool:
        return self.torchvision_name is not None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(*, family: str, source: str, description: str, input_size: int, min_input_size: int,
                   in_channels: int = 3, num_classes: int = 1000, options: dict[str, str] | None = None,
                   torchvision_name: str | None = None) -> Callable:
    """Decorator registering a builder under its function name; a duplicate name raises."""

    def wrap(builder: Callable) -> Callable:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = ModelInfo(
            name=name, builder=builder, family=family, source=source, description=description,
            input_size=input_size, min_input_size=min_input_size, in_channels=in_channels,
            num_classes=num_classes, options=dict(options or {}), torchvision_name=torchvision_name)
        return builder

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (in registration order), optionally of one family."""
    return [name for name, info in _REGISTRY.items() if family is None or info.family == family]


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises listing the close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `cnnbench models list`"
        raise CnnbenchError(f"unknown model {name!r}: {hint}") from None


def check_options(info: ModelInfo, options: dict[str, Any]) -> None:
    """Reject options the builder does not take, naming the valid ones."""
    for key, value in options.items():
        if key not in info.options:
            valid = ", ".join(info.options) or "none"
            raise CnnbenchError(f"model {info.name!r}: unknown option {key!r}; valid options: {valid}")
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise CnnbenchError(f"model {info.name!r}: option {key} expects a single value, got {value!r}")


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CnnbenchError(f"{what}: expected a positive integer, got {value!r}")
    return value


def _frozen(options: dict[str, Any]) -> tuple:
    return tuple(sorted(options.items()))


@functools.lru_cache(maxsize=1024)
def accepts_input_size(name: str, input_size: int, in_channels: int, frozen_options: tuple) -> bool:
    """Whether ``name`` with these options runs a train-mode forward on ``input_size`` pixels.

    Built and run on the meta device (shapes only). Layers that shrink the image to nothing raise
    RuntimeError (conv/pool: "Output size is too small", "Kernel size can't be greater than
    actual input size"), which is the answer "no" here.
    """
    import torch

    from cnnbench.models.base import without_batchnorm

    info = get_model_info(name)
    try:
        with torch.device("meta"):
            model = without_batchnorm(info.builder(num_classes=2, in_channels=in_channels, input_size=input_size,
                                                   pretrained=None, **dict(frozen_options)))
            model.train()  # train mode: auxiliary heads run too
            model(torch.zeros(2, in_channels, input_size, input_size))
    except RuntimeError:
        return False
    return True


def smallest_input_size(name: str, in_channels: int, options: dict[str, Any], upper: int) -> int | None:
    """Smallest square size in [1, upper] that ``name`` accepts (binary search: feasibility grows with size)."""
    frozen = _frozen(options)
    if not accepts_input_size(name, upper, in_channels, frozen):
        return None
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi) // 2
        if accepts_input_size(name, mid, in_channels, frozen):
            hi = mid
        else:
            lo = mid + 1
    return lo


def check_input_size(info: ModelInfo, input_size: int, in_channels: int, options: dict[str, Any]) -> None:
    """Refuse an input size the model cannot take, naming the smallest one it accepts.

    With default options the registered ``min_input_size`` answers (the tests check it is
    exact); other options are probed on the meta device."""
    if not options and input_size >= info.min_input_size:
        return
    if accepts_input_size(info.name, input_size, in_channels, _frozen(options)):
        return
    upper = max(info.input_size, input_size) * 2
    smallest = info.min_input_size if not options else smallest_input_size(info.name, in_channels, options, upper)
    where = f"model {info.name!r}" + (f" with options {options}" if options else "")
    if smallest is None:
        raise CnnbenchError(f"{where} cannot take {input_size}x{input_size} input, nor any size up to {upper} px")
    hints = [f"upsample with data.input_size: {max(smallest, info.input_size)}"]
    if "stem" in info.options and options.get("stem", "imagenet") != "small":
        small = smallest_input_size(info.name, in_channels, {**options, "stem": "small"}, upper)
        if small is not None and small <= input_size:
            hints.append(f"or use the small-image variant (model.options: {{stem: small}}, from {small} px)")
    if options.get("aux_logits", "aux_logits" in info.options):
        no_aux = smallest_input_size(info.name, in_channels, {**options, "aux_logits": False}, upper)
        if no_aux is not None and no_aux < smallest:
            hints.append(f"or drop the auxiliary head (model.options: {{aux_logits: false}}, from {no_aux} px)")
    raise CnnbenchError(f"{where} cannot take {input_size}x{input_size} input: the smallest it accepts is "
                        f"{smallest} px; {' '.join(hints)}")


def create_model(name: str, num_classes: int | None = None, in_channels: int | None = None,
                 input_size: int | None = None, init: str = "default", pretrained: bool = False,
                 weights: str | None = None, **options: Any):
    """Build a registered model with the cnnbench interface (see ``cnnbench.models.base.ZooModel``).

    num_classes / in_channels / input_size default to the model's native ones. ``init`` is one of
    ``INIT_SCHEMES`` and applies to every conv/linear layer not loaded from a checkpoint.
    ``pretrained`` loads torchvision's ImageNet-1k weights (from torchvision's cache, downloading
    there if online) or, when ``weights`` names a local state-dict file, that file; the
    classifier is then replaced for ``num_classes``. ``options`` are the builder's (see
    ``get_model_info(name).options``), e.g. ``stem="small"``.
    """
    from cnnbench.models.init import INIT_SCHEMES, apply_init
    from cnnbench.models.pretrained import load_pretrained

    info = get_model_info(name)
    check_options(info, options)
    num_classes = _positive_int("num_classes", info.num_classes if num_classes is None else num_classes)
    in_channels = _positive_int("in_channels", info.in_channels if in_channels is None else in_channels)
    input_size = _positive_int("input_size", info.input_size if input_size is None else input_size)
    if init not in INIT_SCHEMES:
        raise CnnbenchError(f"init: expected one of {', '.join(INIT_SCHEMES)}, got {init!r}")
    pretrained = bool(pretrained or weights)
    if pretrained and not info.pretrained_available:
        have = ", ".join(n for n, i in _REGISTRY.items() if i.pretrained_available)
        raise CnnbenchError(f"model {name!r} has no ImageNet weights; pretrained models: {have}")
    check_input_size(info, input_size, in_channels, options)

    weights_obj = load_pretrained(info.torchvision_name, weights) if pretrained else None
    model = info.builder(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                         pretrained=weights_obj, **options)
    apply_init(model, init, skip=model.pretrained_parameters)
    model.cnnbench_cfg.update(
        name=name, input_size=input_size, native_input_size=info.input_size, in_channels=in_channels,
        num_classes=num_classes, mean=weights_obj.mean if weights_obj else None,
        std=weights_obj.std if weights_obj else None, pretrained=pretrained,
        weights=weights_obj.source if weights_obj else None, init=init, options=dict(options),
        source=info.source, finetune="all")
    model.cnnbench_cfg.setdefault("aux_weights", [])
    return model
