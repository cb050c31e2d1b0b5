"""VGG-11/13/16/19, with and without BatchNorm, from torchvision (Simonyan & Zisserman 2015).

Small-image variant (``stem="small"``): the five conv stages stay (a 32 px image reaches 1x1,
64 px 2x2); the 7x7 adaptive pool becomes a global one and the 25088-4096-4096 classifier
becomes 512-512-512 with dropout, as in the CIFAR VGG of chengyangfu/pytorch-vgg-cifar10 —
the ImageNet classifier would spend 120M of VGG-16's 138M parameters on copies of one pixel.
"""

from __future__ import annotations

from torch import nn

from cnnbench.models.alexnet import AlexNetAdapter
from cnnbench.models.registry import register_model
from cnnbench.models.torchvision_adapter import TORCHVISION_OPTIONS, build_torchvision


class VGGAdapter(AlexNetAdapter):
    """Same layout as AlexNet's (features, avgpool, classifier with the last Linear at index 6)."""

    init_scales_with_fan_in = False  # torchvision's VGG init: Kaiming-normal, fan-out

    def use_small_stem(self) -> None:
        out_features = self.get_classifier().out_features
        self.replace_module("avgpool", nn.AdaptiveAvgPool2d(1))
        self.replace_module("classifier", nn.Sequential(
            nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Linear(512, out_features),
        ))


_COMMON = dict(family="vgg", source="Simonyan & Zisserman 2015 (torchvision)", input_size=224,
               min_input_size=32, options=TORCHVISION_OPTIONS)


@register_model(**_COMMON, torchvision_name="vgg11", description="VGG-11 (config A): 8 conv 3x3, 5 max-pools, FC-4096 x2, FC")
def vgg11(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg11", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg11_bn", description="VGG-11 with BatchNorm after every conv")
def vgg11_bn(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg11_bn", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg13", description="VGG-13 (config B): 10 conv 3x3, 5 max-pools, FC-4096 x2, FC")
def vgg13(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg13", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg13_bn", description="VGG-13 with BatchNorm after every conv")
def vgg13_bn(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg13_bn", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg16", description="VGG-16 (config D): 13 conv 3x3, 5 max-pools, FC-4096 x2, FC")
def vgg16(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg16", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg16_bn", description="VGG-16 with BatchNorm after every conv")
def vgg16_bn(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg16_bn", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg19", description="VGG-19 (config E): 16 conv 3x3, 5 max-pools, FC-4096 x2, FC")
def vgg19(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg19", **kwargs)


@register_model(**_COMMON, torchvision_name="vgg19_bn", description="VGG-19 with BatchNorm after every conv")
def vgg19_bn(**kwargs) -> VGGAdapter:
    return build_torchvision(VGGAdapter, "vgg19_bn", **kwargs)
