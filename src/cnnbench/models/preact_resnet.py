"""Pre-activation ResNet-18/34 (ours): He et al. 2016, "Identity Mappings in Deep Residual
Networks", full pre-activation block — BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, added
to an untouched identity path. Report 003 compared it with torchvision's ResNet-34 (48% vs 46.5%).

torchvision has no pre-activation ResNet, so this one is written here. As in the paper's
reference code (facebook/fb.resnet.torch, preresnet.lua): a projection shortcut (1x1 conv,
stride 2) takes the block's pre-activated input; after the last block come a final BN and ReLU
(no other activation follows a pre-activation block), then global average pooling and the FC.

Stems: ``imagenet`` = 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (as preresnet.lua for ImageNet);
``small`` = one 3x3/1 conv (as preresnet.lua for CIFAR) — the first block pre-activates it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.models.base import ZooModel, check_choice, check_dropout
from cnnbench.models.registry import STEMS, register_model

WIDTHS = (64, 128, 256, 512)


class PreActBlock(nn.Module):
    """Full pre-activation basic block: x + conv(relu(bn(conv(relu(bn(x))))))."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ZooModel):
    """stem -> layer1..4 -> BN-ReLU (features); avgpool -> dropout -> fc (head)."""

    def __init__(self, depths: tuple[int, ...], num_classes: int, in_channels: int, stem: str, dropout: float) -> None:
        super().__init__(classifier_name="fc", head_names=("avgpool", "head_drop", "fc"))
        self.stem = self.make_stem(in_channels, stem)
        in_planes = WIDTHS[0]
        for index, (planes, depth) in enumerate(zip(WIDTHS, depths), start=1):
            blocks = [PreActBlock(in_planes, planes, stride=1 if index == 1 else 2)]
            blocks += [PreActBlock(planes, planes, stride=1) for _ in range(depth - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_planes = planes
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():  # torchvision's ResNet init
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def make_stem(in_channels: int, stem: str) -> nn.Sequential:
        if stem == "small":
            return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False)))
        return nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, WIDTHS[0], 7, stride=2, padding=3, bias=False),
            bn=nn.BatchNorm2d(WIDTHS[0]), relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(3, stride=2, padding=1),
        ))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, S, S) -> (B, 64, S/4, S/4) imagenet | (B, 64, S, S) small
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.relu(self.bn_final(x))  # (B, 512, S/32, S/32) | (B, 512, S/8, S/8)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(torch.flatten(self.avgpool(features), 1)))


def build_preact(depths: tuple[int, ...], *, num_classes: int, in_channels: int, input_size: int, pretrained=None,
                 stem: str = "imagenet", dropout: float | None = None) -> PreActResNet:
    check_choice("stem", stem, STEMS)
    check_dropout(dropout)
    return PreActResNet(depths, num_classes, in_channels, stem, dropout or 0.0)


_COMMON = dict(family="preact_resnet", source="He et al. 2016, Identity Mappings (ours; compared in report 003)",
               input_size=224, min_input_size=1,
               options={"stem": "imagenet (7x7/2 conv, max-pool) or small (3x3/1 conv) for 32/64 px inputs",
                        "dropout": "dropout rate before the FC (default 0)"})


@register_model(**_COMMON, description="pre-activation ResNet-18: BN-ReLU-conv basic blocks 2-2-2-2, final BN-ReLU, avgpool, FC")
def preact_resnet18(**kwargs) -> PreActResNet:
    return build_preact((2, 2, 2, 2), **kwargs)


@register_model(**_COMMON, description="pre-activation ResNet-34: BN-ReLU-conv basic blocks 3-4-6-3, final BN-ReLU, avgpool, FC")
def preact_resnet34(**kwargs) -> PreActResNet:
    return build_preact((3, 4, 6, 3), **kwargs)
