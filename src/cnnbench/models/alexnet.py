"""AlexNet from torchvision (Krizhevsky et al. 2012; torchvision follows the one-GPU variant of
Krizhevsky 2014), and report 003's AlexNet with an extra 1000 -> 200 FC.

Small-image variant (``stem="small"``): the 11x11 stride-4 first conv becomes 3x3 stride 1 (64
filters, as before); the three max-pools stay, so a 64 px image reaches the last conv at 7x7
(the ImageNet stem leaves 1x1 there, which the adaptive pool then copies into 6x6).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.models.registry import register_model
from cnnbench.models.torchvision_adapter import TORCHVISION_OPTIONS, TorchvisionModel, build_torchvision


class AlexNetAdapter(TorchvisionModel):
    """torchvision AlexNet/VGG layout: features, then avgpool + flatten + classifier MLP."""

    first_conv_name = "features.0"
    init_scales_with_fan_in = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, classifier_name="classifier.6", head_names=("avgpool", "classifier"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, 224, 224) -> (B, 256, 6, 6)

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(features), 1))

    def use_small_stem(self) -> None:
        self.replace_first_conv(kernel_size=3, stride=1, padding=1)


_COMMON = dict(family="alexnet", input_size=224, options=TORCHVISION_OPTIONS, torchvision_name="alexnet")


@register_model(**_COMMON, min_input_size=63, source="Krizhevsky et al. 2012 (torchvision)",
                description="AlexNet: 5 conv (11x11/4, 5x5, 3x3 x3) with 3 max-pools, FC-4096 x2 with dropout, FC")
def alexnet(**kwargs) -> AlexNetAdapter:
    return build_torchvision(AlexNetAdapter, "alexnet", **kwargs)


@register_model(**_COMMON, min_input_size=63, source="report 003 (Mkrtchyan 2022), AlexNet section",
                description="torchvision AlexNet keeping its FC-1000, plus the report's extra FC 1000 -> num_classes")
def alexnet_extra_fc(extra_fc: bool = True, **kwargs) -> AlexNetAdapter:
    return build_torchvision(AlexNetAdapter, "alexnet", extra_fc=extra_fc, **kwargs)
