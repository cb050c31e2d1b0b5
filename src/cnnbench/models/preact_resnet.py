"""Pre-activation ResNet-18/34 (ours): He et al. 2016, "Identity Mappings in Deep Residual
Networks", full pre-activation block — BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, added
to an untouched identity path. Report 003 compared it with torchvision's ResNet-34 (48% vs 46.5%).

torchvision has no pre-activation ResNet, so this one is written here. As in the paper's
reference code (facebook/fb.resnet.torch, preresnet.lua) and its appendix: the first block of
each stage pre-activates *before* the split, so its shortcut (a 1x1 stride-2 projection, or the
identity in stage 1) takes the pre-activated input; the other blocks pre-activate the residual
path only. After the last block come a final BN and ReLU (no other activation follows a
pre-activation block), then global average pooling and the FC.

Stems: ``imagenet`` = 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (as preresnet.lua for ImageNet) —
already activated, so the first block of stage 1 does not pre-activate again ('no_preact');
``small`` = one 3x3/1 conv (as preresnet.lua for CIFAR) — the first block pre-activates it
before the split ('both_preact').
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.models.base import ZooModel, check_choice, check_dropout
from cnnbench.models.registry import RESNET_STEMS, register_model

WIDTHS = (64, 128, 256, 512)


PREACTS = ("residual", "both", "none")  # preresnet.lua's default, 'both_preact', 'no_preact'


class PreActBlock(nn.Module):
    """Full pre-activation basic block: conv(relu(bn(conv(a)))) + shortcut, where ``preact`` says
    what ``a`` and the shortcut's input are: ``residual``: a = relu(bn(x)), shortcut from x;
    ``both``: a = relu(bn(x)), shortcut from a too; ``none``: a = x (the input is already
    activated), shortcut from x."""

    def __init__(self, in_planes: int, planes: int, stride: int, preact: str = "residual") -> None:
        super().__init__()
        check_choice("preact", preact, PREACTS)
        self.preact = preact
        self.bn1 = nn.BatchNorm2d(in_planes) if preact != "none" else None
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)
        if self.shortcut is not None and preact == "residual":
            raise ValueError("a projection shortcut takes the pre-activated input: use preact='both'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.bn1 is None else F.relu(self.bn1(x))
        into_shortcut = out if self.preact == "both" else x
        shortcut = into_shortcut if self.shortcut is None else self.shortcut(into_shortcut)
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
            # preresnet.lua: the ImageNet stem (and small_pool) ends in BN-ReLU(-pool), so stage 1 starts 'no_preact';
            # every other stage's first block pre-activates before the split.
            first = "none" if index == 1 and stem != "small" else "both"
            blocks = [PreActBlock(in_planes, planes, stride=1 if index == 1 else 2, preact=first)]
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
        conv = (nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False) if stem == "small_pool"
                else nn.Conv2d(in_channels, WIDTHS[0], 7, stride=2, padding=3, bias=False))
        return nn.Sequential(OrderedDict(
            conv=conv,
            bn=nn.BatchNorm2d(WIDTHS[0]), relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(3, stride=2, padding=1),
        ))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, S, S) -> (B, 64, S/4, S/4) imagenet | (B, 64, S/2, S/2) small_pool | (B, 64, S, S) small
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.relu(self.bn_final(x))  # (B, 512, S/32, S/32) | (B, 512, S/16, S/16) | (B, 512, S/8, S/8)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(torch.flatten(self.avgpool(features), 1)))


def build_preact(depths: tuple[int, ...], *, num_classes: int, in_channels: int, input_size: int, pretrained=None,
                 stem: str = "imagenet", dropout: float | None = None) -> PreActResNet:
    check_choice("stem", stem, RESNET_STEMS)
    check_dropout(dropout)
    return PreActResNet(depths, num_classes, in_channels, stem, dropout or 0.0)


_COMMON = dict(family="preact_resnet", source="He et al. 2016, Identity Mappings (ours; compared in report 003)",
               input_size=224, min_input_size=1,
               options={"stem": "imagenet (7x7/2 conv, max-pool), small (3x3/1 conv) or small_pool (3x3/1 conv, max-pool) "
                                "for 32/64 px inputs",
                        "dropout": "dropout rate before the FC (default 0)"})


@register_model(**_COMMON, description="pre-activation ResNet-18: BN-ReLU-conv basic blocks 2-2-2-2, final BN-ReLU, avgpool, FC")
def preact_resnet18(**kwargs) -> PreActResNet:
    return build_preact((2, 2, 2, 2), **kwargs)


@register_model(**_COMMON, description="pre-activation ResNet-34: BN-ReLU-conv basic blocks 3-4-6-3, final BN-ReLU, avgpool, FC")
def preact_resnet34(**kwargs) -> PreActResNet:
    return build_preact((3, 4, 6, 3), **kwargs)
