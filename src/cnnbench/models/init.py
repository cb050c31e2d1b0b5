"""Weight initialisation schemes, as the reports named them.

``default`` keeps what the builder did: torchvision's own init for torchvision models (e.g.
Kaiming-normal fan-out convs for ResNet), PyTorch's layer defaults for the reports' nets.
The other schemes re-initialise every Conv2d / Linear weight and zero its bias (Keras' default
``bias_initializer="zeros"``, which the Keras reports inherited); BatchNorm keeps gamma=1, beta=0.

``normal`` is report 000's "RUI" (random unit initialisation). A literal N(0, 1) cannot be what
they trained: with ReLU each layer multiplies the activation variance by about fan_in / 2 (64
for a 2x2 conv over 32 channels), so nine conv layers overflow float32 and model A could not have
reached the 17% it reports. The report used Keras 2 (Sec. 3.2.1), whose ``RandomNormal``
initializer defaults to mean 0, stddev 0.05 — that is what ``normal`` does.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

KERAS_RANDOM_NORMAL_STD = 0.05  # keras.initializers.RandomNormal(mean=0.0, stddev=0.05), Keras 2.x


def _normal(weight: torch.Tensor) -> None:
    nn.init.normal_(weight, mean=0.0, std=KERAS_RANDOM_NORMAL_STD)


def _he(weight: torch.Tensor) -> None:
    # He et al. 2015: N(0, 2 / fan_in), what Keras' he_normal targets (Keras draws it truncated).
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")


def _glorot(weight: torch.Tensor) -> None:
    # Glorot & Bengio 2010 uniform: Keras' glorot_uniform, its default kernel initializer.
    nn.init.xavier_uniform_(weight)


_INITIALIZERS: dict[str, Callable[[torch.Tensor], None] | None] = {
    "default": None,
    "normal": _normal,
    "he": _he,
    "glorot": _glorot,
}
INIT_SCHEMES = tuple(_INITIALIZERS)


def apply_init(model: nn.Module, scheme: str, skip: Iterable[str] = ()) -> None:
    """Re-initialise conv/linear layers with ``scheme``; parameters named in ``skip`` (loaded
    from a pretrained checkpoint) are left alone."""
    initializer = _INITIALIZERS[scheme]
    if initializer is None:
        return
    skip = set(skip)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            prefix = f"{name}." if name else ""
            if f"{prefix}weight" in skip:
                continue
            initializer(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
