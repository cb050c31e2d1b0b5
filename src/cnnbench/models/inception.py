"""Inception-V3 (Szegedy et al. 2016) and GoogLeNet (Szegedy et al. 2015) from torchvision,
with their auxiliary classifiers.

With ``aux_logits=True`` (torchvision's default) a train-mode forward returns ``(logits,
aux_logits, ...)`` and ``has_aux`` is True; in eval mode it is always the plain logits tensor.
``cnnbench_cfg["aux_weights"]`` gives the weight of each auxiliary loss: 0.3 for GoogLeNet's two
(Szegedy et al. 2015, Sec. 5), 0.4 for Inception-V3's one (PyTorch's fine-tuning tutorial,
``loss = loss1 + 0.4 * loss2``).

Small-image variant (``stem="small"``): the first conv runs at stride 1 and the first max-pool
goes (GoogLeNet's 7x7 first conv also becomes 3x3): Inception-V3 then takes 32 px instead of 75
(299 with the auxiliary head, whose 5x5 conv needs a 17x17 Mixed_6e map), GoogLeNet reaches
its last block at 8x8 from 64 px. Pretrained 3-channel inputs go through torchvision's
``transform_input`` (ImageNet mean/std -> the [-1, 1] scaling the ported weights expect); with
``in_channels`` other than 3 there are no ImageNet channels to rescale and it stays off.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.models.registry import register_model
from cnnbench.models.torchvision_adapter import (
    TORCHVISION_OPTIONS, TorchvisionModel, build_torchvision, check_choice)

AUX_OPTIONS = {**TORCHVISION_OPTIONS, "aux_logits": "auxiliary classifier(s) trained with the net (default True)"}


class AuxTorchvisionModel(TorchvisionModel):
    """Adapter for nets with auxiliary heads tapped from named feature stages."""

    aux_taps: dict[str, str] = {}  # feature stage -> auxiliary head fed by its output
    aux_classifiers: tuple[str, ...] = ()  # final layers of the auxiliary heads
    aux_weights: list[float] = []

    def __init__(self, net: nn.Module, head_names: tuple[str, ...]) -> None:
        super().__init__(net, classifier_name="fc", head_names=head_names)
        self.transform_input = net.transform_input
        self.has_aux = net.aux_logits
        skip = set(self.aux_taps.values()) | set(head_names)
        self.feature_order = [name for name, _ in net.named_children() if name not in skip]

    def _features(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.transform_input:
            x = self.transform_imagenet_input(x)
        aux = []
        for name in self.feature_order:
            x = getattr(self, name)(x)
            if with_aux and name in self.aux_taps:
                aux.append(getattr(self, self.aux_taps[name])(x))
        return x, aux

    def transform_imagenet_input(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.models import Inception3

        return Inception3._transform_input(self, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, with_aux=False)[0]

    def forward(self, x: torch.Tensor):
        features, aux = self._features(x, with_aux=self.training and self.has_aux)
        logits = self.forward_head(features)
        return (logits, *aux) if aux else logits

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.extra_fc is None:
            self.reset_aux_classifiers(num_classes)

    def add_extra_fc(self, num_classes: int) -> None:
        super().add_extra_fc(num_classes)
        self.reset_aux_classifiers(num_classes)  # the auxiliary heads predict the dataset's classes

    def reset_aux_classifiers(self, num_classes: int) -> None:
        for name in self.aux_classifiers:
            if any(n.startswith(name) for n, _ in self.named_parameters()):
                old = self.get_submodule(name)
                self.replace_module(name, nn.Linear(old.in_features, num_classes, device=old.weight.device))

    def drop_aux(self) -> None:
        """Remove the auxiliary heads (their weights came with the checkpoint)."""
        for name in set(self.aux_taps.values()):
            self.replace_module(name, nn.Identity())
        self.has_aux = False


class InceptionV3Adapter(AuxTorchvisionModel):
    first_conv_name = "Conv2d_1a_3x3.conv"
    aux_taps = {"Mixed_6e": "AuxLogits"}
    aux_classifiers = ("AuxLogits.fc",)
    aux_weights = [0.4]

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, head_names=("avgpool", "dropout", "fc"))

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.dropout(self.avgpool(features)), 1))  # (B, 2048, 8, 8) -> (B, classes)

    def use_small_stem(self) -> None:
        self.replace_first_conv(stride=1)
        self.replace_module("maxpool1", nn.Identity())


class GoogLeNetAdapter(AuxTorchvisionModel):
    first_conv_name = "conv1.conv"
    aux_taps = {"inception4a": "aux1", "inception4d": "aux2"}
    aux_classifiers = ("aux1.fc2", "aux2.fc2")
    aux_weights = [0.3, 0.3]

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, head_names=("avgpool", "dropout", "fc"))

    def transform_imagenet_input(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.models import GoogLeNet

        return GoogLeNet._transform_input(self, x)

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(features), 1)))  # (B, 1024, 7, 7) -> (B, classes)

    def use_small_stem(self) -> None:
        self.replace_first_conv(kernel_size=3, stride=1, padding=1)
        self.replace_module("maxpool1", nn.Identity())


def _build_aux(adapter: type[AuxTorchvisionModel], torchvision_name: str, aux_logits: bool = True, **kwargs):
    check_choice("aux_logits", aux_logits, (True, False))
    pretrained = kwargs.get("pretrained") is not None
    # As torchvision's own builders do with weights: build with the auxiliary heads so the
    # checkpoint loads strictly, feed it [-1, 1]-scaled input, skip the (slow) random init.
    # The rescaling is per ImageNet RGB channel; other channel counts get the stem conv as adapted
    # (summed RGB filters) and the dataset's own normalisation, as every other pretrained family.
    model = build_torchvision(adapter, torchvision_name, aux_logits=aux_logits or pretrained,
                              transform_input=pretrained and kwargs["in_channels"] == 3,
                              init_weights=not pretrained, **kwargs)
    if not aux_logits and model.has_aux:
        model.drop_aux()
    model.cnnbench_cfg["aux_weights"] = list(adapter.aux_weights) if model.has_aux else []
    return model


@register_model(family="inception", source="Szegedy et al. 2016, Rethinking the Inception Architecture (torchvision)",
                input_size=299, min_input_size=299, options=AUX_OPTIONS, torchvision_name="inception_v3",
                description="Inception-V3: factorised-conv stem, Inception A/B/C modules, auxiliary head on Mixed_6e, FC")
def inception_v3(**kwargs) -> InceptionV3Adapter:
    return _build_aux(InceptionV3Adapter, "inception_v3", **kwargs)


@register_model(family="inception", source="Szegedy et al. 2015, Going Deeper with Convolutions (torchvision)",
                input_size=224, min_input_size=15, options=AUX_OPTIONS, torchvision_name="googlenet",
                description="GoogLeNet (Inception-V1 with BN): 9 Inception modules, two auxiliary heads, FC")
def googlenet(**kwargs) -> GoogLeNetAdapter:
    return _build_aux(GoogLeNetAdapter, "googlenet", **kwargs)
