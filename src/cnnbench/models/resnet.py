"""ResNet-18/34/50/101/152 from torchvision (He et al. 2016), with a small-image stem.

Small-image variant (``stem="small"``): the 7x7 stride-2 conv becomes a 3x3 stride-1 conv and
the first max-pool goes, as in He et al.'s CIFAR ResNets and the Tiny ImageNet ResNet-18 that
reaches 60.7% top-1 at 64 px (shared/ANCHORS.md): a 64 px image then reaches layer4 at 8x8
instead of 2x2, for about 15x the FLOPs of the ImageNet stem at the same input size.

Between the two (``stem="small_pool"``): the same 3x3 stride-1 conv, with the max-pool kept, as
many Tiny ImageNet ResNets do: a 64 px image reaches layer1 at 32x32 and layer4 at 4x4, for about
4x the ImageNet stem's FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.models.registry import RESNET_STEMS, register_model
from cnnbench.models.torchvision_adapter import TORCHVISION_OPTIONS, TorchvisionModel, build_torchvision

SOURCE = "He et al. 2016, Deep Residual Learning (torchvision)"


class ResNetAdapter(TorchvisionModel):
    """torchvision ResNet: features = stem + layer1..4, head = avgpool + (dropout) + fc."""

    first_conv_name = "conv1"
    # forward_features uses ``relu`` only right after ``bn1``: a fused batch norm may take it over
    # (cnnbench.train.fused_bn)
    stem_relu_follows_bn1 = True
    # ... and ``maxpool`` only right after that ``relu``: the fused batch norm may take the pool over too
    stem_pool_follows_relu = True
    stems = RESNET_STEMS

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, classifier_name="fc", head_names=("avgpool", "head_drop", "fc"))
        # torchvision's ResNet has no dropout; a rate-0 Dropout makes the `dropout` option uniform.
        self.head_drop = nn.Dropout(0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 3, S, S) -> (B, 64, S/4, S/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # -> (B, 512|2048, S/32, S/32)

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(torch.flatten(self.avgpool(features), 1)))

    def use_small_stem(self) -> None:
        self.use_small_pool_stem()
        self.maxpool = nn.Identity()

    def use_small_pool_stem(self) -> None:
        self.replace_first_conv(kernel_size=3, stride=1, padding=1)


def _resnet(torchvision_name: str, **kwargs) -> ResNetAdapter:
    return build_torchvision(ResNetAdapter, torchvision_name, **kwargs)


_COMMON = dict(family="resnet", source=SOURCE, input_size=224, options={
    **TORCHVISION_OPTIONS,
    "stem": "imagenet (torchvision's 7x7/2 conv, max-pool), small (3x3/1 conv, no pool: ~15x the FLOPs at 64 px) "
            "or small_pool (3x3/1 conv, max-pool: ~4x)"})


@register_model(**_COMMON, min_input_size=1, torchvision_name="resnet18",
                description="ResNet-18: 7x7 stem, 4 stages of 2 basic blocks (64-128-256-512), avgpool, FC")
def resnet18(**kwargs) -> ResNetAdapter:
    return _resnet("resnet18", **kwargs)


@register_model(**_COMMON, min_input_size=1, torchvision_name="resnet34",
                description="ResNet-34: 7x7 stem, basic blocks 3-4-6-3 (64-128-256-512), avgpool, FC")
def resnet34(**kwargs) -> ResNetAdapter:
    return _resnet("resnet34", **kwargs)


@register_model(**_COMMON, min_input_size=1, torchvision_name="resnet50",
                description="ResNet-50: 7x7 stem, bottleneck blocks 3-4-6-3 (256-512-1024-2048), avgpool, FC")
def resnet50(**kwargs) -> ResNetAdapter:
    return _resnet("resnet50", **kwargs)


@register_model(**_COMMON, min_input_size=1, torchvision_name="resnet101",
                description="ResNet-101: 7x7 stem, bottleneck blocks 3-4-23-3, avgpool, FC")
def resnet101(**kwargs) -> ResNetAdapter:
    return _resnet("resnet101", **kwargs)


@register_model(**_COMMON, min_input_size=1, torchvision_name="resnet152",
                description="ResNet-152: 7x7 stem, bottleneck blocks 3-8-36-3, avgpool, FC")
def resnet152(**kwargs) -> ResNetAdapter:
    return _resnet("resnet152", **kwargs)
