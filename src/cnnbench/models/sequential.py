"""Plain feed-forward nets written as two named ``nn.Sequential``s: the reports' own networks.

``features`` holds the conv stack, ``head`` the flatten + fully connected layers (the last one
is ``head.fc_out``). Layer names follow the reports' tables (conv1, bn1, pool1, fc1, ...) so
that ``l2_layers`` can name exactly the layers a report put its L2 penalty on.

Where a report leaves padding unsaid we use its framework's default: Keras ``Conv2D`` pads
'valid' (reports 000, 002), PyTorch ``nn.Conv2d`` pads 0 (reports 001, 003) — the same thing.
The ``padding`` option switches to 'same'. The first FC layer's width therefore depends on the
input size; builders size it with a shape-only forward.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnbench.models.base import ZooModel, check_choice, check_dropout

PADDINGS = ("valid", "same")
OWN_OPTIONS = {
    "dropout": "dropout rate before the output layer (None keeps the report's)",
    "padding": "valid (the framework default the report used) or same",
}

# Keras BatchNormalization defaults (momentum=0.99, epsilon=1e-3); PyTorch's momentum is the
# weight of the new batch, i.e. 1 - 0.99.
KERAS_BN = dict(eps=1e-3, momentum=0.01)


class SequentialNet(ZooModel):
    """features (conv stack) -> head (Flatten, FC layers, ``fc_out``)."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential, l2_layers: list[str] | None = None) -> None:
        super().__init__(classifier_name="head.fc_out", head_names=("head",))
        self.features = features
        self.head = head
        self.l2_layers = list(l2_layers or [])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def flat_size(features: nn.Module, in_channels: int, input_size: int) -> int:
    """Number of features the conv stack hands to the first FC layer at this input size."""
    device = next((p.device for p in features.parameters()), torch.device("cpu"))
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, input_size, input_size, device=device))
    features.train(was_training)
    return out[0].numel()


def check_options(dropout: float | None, padding: str) -> None:
    check_dropout(dropout)
    check_choice("padding", padding, PADDINGS)


def conv(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], padding: str) -> nn.Conv2d:
    """Stride-1 conv with Keras-named padding ('valid' = 0; 'same' pads the extra row/column at
    the bottom/right for even kernels, as Keras does)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=0 if padding == "valid" else "same")


def conv_blocks(in_channels: int, blocks: list[list[tuple[int, int | tuple[int, int]]]], padding: str,
                batch_norm: bool = False) -> nn.Sequential:
    """conv{i} -> relu{i} (-> bn{i}) for each (filters, kernel) of a block; pool{b} (2x2 max) closes each block.

    BN comes after the ReLU: the Keras reports write "conv, ReLu, BN" for
    ``Conv2D(activation="relu")`` followed by ``BatchNormalization``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    index = 0
    for block, convs in enumerate(blocks, start=1):
        for filters, kernel in convs:
            index += 1
            layers[f"conv{index}"] = conv(in_channels, filters, kernel, padding)
            layers[f"relu{index}"] = nn.ReLU(inplace=True)
            if batch_norm:
                layers[f"bn{index}"] = nn.BatchNorm2d(filters, **KERAS_BN)
            in_channels = filters
        layers[f"pool{block}"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


def classifier_head(in_features: int, hidden: list[int], num_classes: int, *, dropout: float = 0.0,
                    hidden_dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Flatten -> [fc_i -> relu_i (-> bn_i) (-> drop_i)]* (-> drop) -> fc_out.

    ``hidden_dropout`` follows every hidden FC (report 002); ``dropout`` sits just before the
    output layer (reports 000 C/D)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for i, units in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, units)
        layers[f"relu_fc{i}"] = nn.ReLU(inplace=True)
        if batch_norm:
            layers[f"bn_fc{i}"] = nn.BatchNorm1d(units, **KERAS_BN)
        if hidden_dropout > 0:
            layers[f"drop_fc{i}"] = nn.Dropout(hidden_dropout)
        width = units
    if dropout > 0:
        layers["drop"] = nn.Dropout(dropout)
    layers["fc_out"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def checked_flat_size(name: str, features: nn.Module, in_channels: int, input_size: int) -> int:
    """``flat_size``, as a RuntimeError that create_model's size probe understands when the conv
    stack shrinks the image to nothing."""
    size = flat_size(features, in_channels, input_size)
    if size == 0:
        raise RuntimeError(f"{name}: Output size is too small at {input_size} px")
    return size

