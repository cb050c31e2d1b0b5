"""Report 002 (Matejovicova 2018, "Tiny Imagenet: Image Classification"): its four Keras models.

Sec. 2.5-2.6, 64x64x3 input, ReLU everywhere but the softmax output, dropout 0.2 after every
hidden fully connected layer (Sec. 2.3), L2 (5e-4) on the layers' weights — the report does not
say which, so ``l2_layers`` lists every conv and dense layer, as Keras' per-layer
``kernel_regularizer`` is usually set. Convs are 3x3 with Keras' default 'valid' padding,
max-pools 2x2:

  logreg      Flatten -> FC-200 (softmax)
  mlp1        Flatten -> FC-hidden -> FC-200; the report's Figure 2 (the width) is lost, we use
              1024, the width of its CNNs' FC layer (option ``hidden``)
  simple_cnn  conv-32, conv-32, pool -> FC-1024 -> FC-200      (64 -> 62 -> 60 -> 30: 28,800 inputs)
  vgg_like    [conv-32 x2, pool], [conv-64 x2, pool], [conv-128 x2, pool] -> FC-1024 -> FC-200
              (64 -> 30 -> 13 -> 4: 2,048 inputs)
"""

from __future__ import annotations

from torch import nn

from cnnbench.models.base import check_dropout
from cnnbench.models.registry import register_model
from cnnbench.models.sequential import (
    OWN_OPTIONS, SequentialNet, check_options, checked_flat_size, classifier_head, conv_blocks)

SOURCE = "report 002 (Matejovicova 2018), Sec. 2.5-2.6"
HIDDEN_DROPOUT = 0.2  # Sec. 2.3: "dropout of 0.2 is used for all the fully connected layers"


def l2_everywhere(model: SequentialNet) -> SequentialNet:
    model.l2_layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return model


def build_cnn(name: str, widths: list[int], *, num_classes: int, in_channels: int, input_size: int,
              pretrained=None, dropout: float | None = None, padding: str = "valid") -> SequentialNet:
    check_options(dropout, padding)
    features = conv_blocks(in_channels, [[(w, 3), (w, 3)] for w in widths], padding)
    head = classifier_head(checked_flat_size(name, features, in_channels, input_size), [1024], num_classes,
                           hidden_dropout=HIDDEN_DROPOUT if dropout is None else dropout)
    return l2_everywhere(SequentialNet(features, head))


_COMMON = dict(family="baseline", source=SOURCE, input_size=64, num_classes=200)


@register_model(**_COMMON, min_input_size=1, options={"dropout": "dropout rate on the input pixels (default 0)"},
                description="multiclass logistic regression: Flatten -> FC-200 (softmax)")
def logreg(*, num_classes: int, in_channels: int, input_size: int, pretrained=None,
           dropout: float | None = None) -> SequentialNet:
    check_dropout(dropout)
    head = classifier_head(in_channels * input_size * input_size, [], num_classes, dropout=dropout or 0.0)
    return l2_everywhere(SequentialNet(nn.Sequential(), head))


@register_model(**_COMMON, min_input_size=1, options={"dropout": "dropout rate after the hidden layer (default 0.2)", "hidden": "hidden layer width (default 1024)"},
                description="fully connected net, one hidden layer: Flatten -> FC-1024 -> dropout 0.2 -> FC-200")
def mlp1(*, num_classes: int, in_channels: int, input_size: int, pretrained=None, dropout: float | None = None,
         hidden: int = 1024) -> SequentialNet:
    check_dropout(dropout)
    head = classifier_head(in_channels * input_size * input_size, [hidden], num_classes,
                           hidden_dropout=HIDDEN_DROPOUT if dropout is None else dropout)
    return l2_everywhere(SequentialNet(nn.Sequential(), head))


@register_model(**_COMMON, min_input_size=6, options=OWN_OPTIONS,
                description="simple CNN: conv3x3-32 x2, max-pool, FC-1024, dropout 0.2, FC-200")
def simple_cnn(**kwargs) -> SequentialNet:
    return build_cnn("simple_cnn", [32], **kwargs)


@register_model(**_COMMON, min_input_size=36, options=OWN_OPTIONS,
                description="VGG-like CNN: [conv3x3 x2, max-pool] x3 (32-64-128), FC-1024, dropout 0.2, FC-200")
def vgg_like(**kwargs) -> SequentialNet:
    return build_cnn("vgg_like", [32, 64, 128], **kwargs)
