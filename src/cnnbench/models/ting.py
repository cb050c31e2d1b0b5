"""J. Ting's M1 and M4 ("Using Convolutional Neural Network for the Tiny ImageNet Challenge"),
as report 003 (Mkrtchyan 2022) gives them in its Tables 1 and 2 and trained them (PyTorch).

  M1  ConvReLU(5x5-16), MaxPool, ConvReLU(3x3-16), MaxPool, ConvReLU(3x3-32), MaxPool, FCReLU(256), FC(200)
  M4  ConvReLU(5x5-32) x2, MaxPool, ConvReLU(3x3-64) x2, MaxPool, ConvReLU(3x3-64), ConvReLU(3x3-128),
      MaxPool, FCReLU(256), FC(200)

Max-pools are 2x2 (unstated; the usual choice). Padding is PyTorch's default 0, which the
report's code inherited: M1 sees 64 -> 60 -> 30 -> 28 -> 14 -> 12 -> 6 (FC input 6*6*32 =
1,152), M4 64 -> 56 -> 28 -> 24 -> 12 -> 8 -> 4 (FC input 4*4*128 = 2,048).
"""

from __future__ import annotations

from cnnbench.models.registry import register_model
from cnnbench.models.sequential import OWN_OPTIONS, SequentialNet, check_options, checked_flat_size, classifier_head, conv_blocks

SOURCE = "J. Ting, via report 003 (Mkrtchyan 2022), Tables 1-2"
# Each block: list of (filters, kernel) convs, then a 2x2 max-pool.
M1_BLOCKS = [[(16, 5)], [(16, 3)], [(32, 3)]]
M4_BLOCKS = [[(32, 5), (32, 5)], [(64, 3), (64, 3)], [(64, 3), (128, 3)]]


def build_ting(name: str, blocks: list[list[tuple[int, int]]], *, num_classes: int, in_channels: int,
               input_size: int, pretrained=None, dropout: float | None = None, padding: str = "valid") -> SequentialNet:
    check_options(dropout, padding)
    features = conv_blocks(in_channels, blocks, padding)
    head = classifier_head(checked_flat_size(name, features, in_channels, input_size), [256], num_classes, dropout=dropout or 0.0)
    return SequentialNet(features, head)


_COMMON = dict(family="ting", source=SOURCE, input_size=64, num_classes=200, options=OWN_OPTIONS)


@register_model(**_COMMON, min_input_size=24, description="M1 (report 003's baseline): 3 conv-ReLU-pool (5x5-16, 3x3-16, 3x3-32), FC-256, FC-200")
def ting_m1(**kwargs) -> SequentialNet:
    return build_ting("ting_m1", M1_BLOCKS, **kwargs)


@register_model(**_COMMON, min_input_size=40, description="M4: 6 conv-ReLU (5x5-32 x2, 3x3-64 x3, 3x3-128), 3 max-pools, FC-256, FC-200")
def ting_m4(**kwargs) -> SequentialNet:
    return build_ting("ting_m4", M4_BLOCKS, **kwargs)
