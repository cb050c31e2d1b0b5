"""LeNet-5 as report 001 (von Martens 2019) used it: 28x28 grayscale input (Sec. 4).

Sec. 3.1: two conv layers, each followed by a max-pool, then three fully connected layers,
ReLU after all of them but the output. The report's figure is lost; we use LeCun et al.'s
widths (conv 5x5-6, conv 5x5-16, FC-120, FC-84) and PyTorch's default padding 0, which the
report (PyTorch) inherited: 28 -> 24 -> 12 -> 8 -> 4, so FC-120 sees 16*4*4 = 256 inputs.
"""

from __future__ import annotations

from cnnbench.models.registry import register_model
from cnnbench.models.sequential import OWN_OPTIONS, SequentialNet, check_options, checked_flat_size, classifier_head, conv_blocks


@register_model(family="lenet", source="LeCun et al. 1998; report 001 (von Martens 2019), Sec. 3.1",
                input_size=28, min_input_size=16, in_channels=1, num_classes=200, options=OWN_OPTIONS,
                description="LeNet-5: conv5x5-6, pool, conv5x5-16, pool, FC-120, FC-84, FC (ReLU, max-pool)")
def lenet5(*, num_classes: int, in_channels: int, input_size: int, pretrained=None, dropout: float | None = None,
           padding: str = "valid") -> SequentialNet:
    check_options(dropout, padding)
    features = conv_blocks(in_channels, [[(6, 5)], [(16, 5)]], padding)  # conv-ReLU-pool x2
    head = classifier_head(checked_flat_size("lenet5", features, in_channels, input_size), [120, 84], num_classes,
                           dropout=dropout or 0.0)
    return SequentialNet(features, head)
