"""SqueezeNet 1.0 and 1.1 from torchvision (Iandola et al. 2016).

Small-image variant (``stem="small"``): the first conv keeps its kernel and filters but runs at
stride 1 with padding 1 (1.0: 7x7 -> 3x3, since a 7x7 at stride 1 would be the most expensive
layer of the net); the three max-pools stay, so 64 px reaches the last Fire module at 8x8.
For SqueezeNet 1.1 the pretrained 3x3 kernel is kept as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.models.registry import register_model
from cnnbench.models.torchvision_adapter import TORCHVISION_OPTIONS, TorchvisionModel, build_torchvision


class SqueezeNetAdapter(TorchvisionModel):
    """features = conv + Fire modules; head = dropout, 1x1 conv to classes, ReLU, global avgpool."""

    first_conv_name = "features.0"
    init_scales_with_fan_in = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, classifier_name="classifier.1", head_names=("classifier",))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, 224, 224) -> (B, 512, 13, 13)

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(features), 1)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        # torchvision initialises the final conv with N(0, 0.01): its output feeds a ReLU and a
        # global average straight into the loss.
        nn.init.normal_(self.get_classifier().weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.get_classifier().bias)

    def use_small_stem(self) -> None:
        self.replace_first_conv(kernel_size=3, stride=1, padding=1)


_COMMON = dict(family="squeezenet", source="Iandola et al. 2016, SqueezeNet (torchvision)", input_size=224,
               options=TORCHVISION_OPTIONS)


@register_model(**_COMMON, min_input_size=21, torchvision_name="squeezenet1_0",
                description="SqueezeNet 1.0: 7x7/2 conv-96, 8 Fire modules, pools after conv1/fire4/fire8, 1x1 conv classifier")
def squeezenet1_0(**kwargs) -> SqueezeNetAdapter:
    return build_torchvision(SqueezeNetAdapter, "squeezenet1_0", **kwargs)


@register_model(**_COMMON, min_input_size=17, torchvision_name="squeezenet1_1",
                description="SqueezeNet 1.1: 3x3/2 conv-64, 8 Fire modules, pools after conv1/fire3/fire5 (2.4x fewer FLOPs)")
def squeezenet1_1(**kwargs) -> SqueezeNetAdapter:
    return build_torchvision(SqueezeNetAdapter, "squeezenet1_1", **kwargs)
