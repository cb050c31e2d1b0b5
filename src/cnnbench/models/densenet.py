"""DenseNet-121 and -161 from torchvision (Huang et al. 2017), with a small-image stem.

Small-image variant (``stem="small"``): the 7x7 stride-2 conv becomes 3x3 stride 1 and the first
max-pool goes (as for ResNet), so 64 px reaches the last dense block at 8x8 instead of 2x2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.models.registry import register_model
from cnnbench.models.torchvision_adapter import TORCHVISION_OPTIONS, TorchvisionModel, build_torchvision


class DenseNetAdapter(TorchvisionModel):
    """features = torchvision's ``features`` + final ReLU; head = global avgpool + (dropout) + FC."""

    first_conv_name = "features.conv0"
    init_scales_with_fan_in = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, classifier_name="classifier", head_names=("head_drop", "classifier"))
        # torchvision's DenseNet has no classifier dropout (its drop_rate is inside the blocks).
        self.head_drop = nn.Dropout(0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))  # (B, 3, S, S) -> (B, 1024|2208, S/32, S/32)

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, (1, 1)), 1)
        return self.classifier(self.head_drop(pooled))

    def use_small_stem(self) -> None:
        self.replace_first_conv(kernel_size=3, stride=1, padding=1)
        self.replace_module("features.pool0", nn.Identity())


_COMMON = dict(family="densenet", source="Huang et al. 2017, Densely Connected CNNs (torchvision)",
               input_size=224, min_input_size=29, options=TORCHVISION_OPTIONS)


@register_model(**_COMMON, torchvision_name="densenet121",
                description="DenseNet-121: growth 32, dense blocks 6-12-24-16 with transitions, global avgpool, FC")
def densenet121(**kwargs) -> DenseNetAdapter:
    return build_torchvision(DenseNetAdapter, "densenet121", **kwargs)


@register_model(**_COMMON, torchvision_name="densenet161",
                description="DenseNet-161: growth 48, 96-channel stem, dense blocks 6-12-36-24, global avgpool, FC")
def densenet161(**kwargs) -> DenseNetAdapter:
    return build_torchvision(DenseNetAdapter, "densenet161", **kwargs)
