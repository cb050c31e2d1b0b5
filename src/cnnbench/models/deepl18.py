"""Report 000 (Skagerström, Price, Lindqvist 2018, "Deepl-18"): VGG-style Keras nets A-F.

Table 1 (A-D) and Table 2 (E, F), 64x64x3 input: three blocks of three convs — 32 filters
with 2x2, 2x1, 1x2 kernels, then 48 and 80 filters with 2x2 kernels — each block ending in a
2x2 max-pool, then the fully connected part:

  A  SGD, RUI          FC-2048, FC-200
  B  Adam, RUI, BN     BN after every conv and the FC-2048
  C  Adam, RUI         FC-2048, Dropout 0.3, FC-200
  D  Adam, HEI, BN     B's layers + Dropout 0.3 before FC-200
  E  Adam, HEI, BN, L2 3 x (FC-4096, ReLU, BN), FC-200; L2 on each block's third conv and the FC-4096s
  F  Adam, HEI, BN, L2 the conv stack straight into FC-200; L2 on each block's third conv

The tables write "conv, ReLU, BN": Keras ``Conv2D(activation="relu")`` followed by
``BatchNormalization``, so BN comes after the ReLU here. Padding is Keras' default 'valid'
(64 -> 62 after the first block's convs, pools to 31, 14, 5: the FC layer sees 5*5*80 = 2000).
The initialisation (RUI = ``init: normal``, HEI = ``init: he``) and the L2 strength (1e-3 for
E, 5e-3 for F) are recipe settings; ``l2_layers`` says where the penalty goes.
"""

from __future__ import annotations

from cnnbench.models.registry import register_model
from cnnbench.models.sequential import (
    OWN_OPTIONS, SequentialNet, check_options, checked_flat_size, classifier_head, conv_blocks)

SOURCE = "report 000 (Skagerström et al. 2018, Deepl-18)"
# (filters, kernel) per conv; a max-pool closes each block of three.
BLOCKS = [
    [(32, (2, 2)), (32, (2, 1)), (32, (1, 2))],
    [(48, (2, 2)), (48, (2, 2)), (48, (2, 2))],
    [(80, (2, 2)), (80, (2, 2)), (80, (2, 2))],
]
L2_CONVS = ["features.conv3", "features.conv6", "features.conv9"]  # Table 2: "..., BN, L2"


def build_deepl18(name: str, *, hidden: list[int], batch_norm: bool, default_dropout: float, l2_fc: bool,
                  l2_convs: bool, num_classes: int, in_channels: int, input_size: int, pretrained=None,
                  dropout: float | None = None, padding: str = "valid") -> SequentialNet:
    check_options(dropout, padding)
    features = conv_blocks(in_channels, BLOCKS, padding, batch_norm)
    head = classifier_head(checked_flat_size(name, features, in_channels, input_size), hidden, num_classes,
                           dropout=default_dropout if dropout is None else dropout, batch_norm=batch_norm)
    l2 = (L2_CONVS if l2_convs else []) + ([f"head.fc{i}" for i in range(1, len(hidden) + 1)] if l2_fc else [])
    return SequentialNet(features, head, l2)


_COMMON = dict(family="deepl18", source=SOURCE, input_size=64, min_input_size=28, num_classes=200,
               options=OWN_OPTIONS)


@register_model(**_COMMON, description="Table 1 A: 9 small convs (32-48-80), 3 max-pools, FC-2048, FC-200; trained with SGD, RUI")
def deepl18_a(**kwargs) -> SequentialNet:
    return build_deepl18("deepl18_a", hidden=[2048], batch_norm=False, default_dropout=0.0, l2_fc=False,
                         l2_convs=False, **kwargs)


@register_model(**_COMMON, description="Table 1 B: A with BN after every conv and the FC-2048; Adam, RUI")
def deepl18_b(**kwargs) -> SequentialNet:
    return build_deepl18("deepl18_b", hidden=[2048], batch_norm=True, default_dropout=0.0, l2_fc=False,
                         l2_convs=False, **kwargs)


@register_model(**_COMMON, description="Table 1 C: A with Dropout 0.3 before FC-200; Adam, RUI")
def deepl18_c(**kwargs) -> SequentialNet:
    return build_deepl18("deepl18_c", hidden=[2048], batch_norm=False, default_dropout=0.3, l2_fc=False,
                         l2_convs=False, **kwargs)


@register_model(**_COMMON, description="Table 1 D: B with Dropout 0.3 before FC-200; Adam, He init")
def deepl18_d(**kwargs) -> SequentialNet:
    return build_deepl18("deepl18_d", hidden=[2048], batch_norm=True, default_dropout=0.3, l2_fc=False,
                         l2_convs=False, **kwargs)


@register_model(**_COMMON, description="Table 2 E: BN convs, 3 x FC-4096 with BN, FC-200; L2 on 3 convs + FCs; Adam, He init")
def deepl18_e(**kwargs) -> SequentialNet:
    return build_deepl18("deepl18_e", hidden=[4096, 4096, 4096], batch_norm=True, default_dropout=0.0, l2_fc=True,
                         l2_convs=True, **kwargs)


@register_model(**_COMMON, description="Table 2 F: BN convs straight into FC-200; L2 on each block's third conv; Adam, He init")
def deepl18_f(**kwargs) -> SequentialNet:
    return build_deepl18("deepl18_f", hidden=[], batch_norm=True, default_dropout=0.0, l2_fc=False,
                         l2_convs=True, **kwargs)
