"""A thin adapter giving torchvision models the cnnbench interface, and the shared build steps.

The adapter adopts the torchvision model's children under their own names, so its state-dict
keys are exactly torchvision's (pretrained checkpoints load as they are). Each family module
(``resnet.py``, ``vgg.py``, ...) subclasses it with the family's split into
``forward_features`` / ``forward_head`` — the same calls, in the same order, as torchvision's
own ``forward`` — and its small-image variant (``use_small_stem``).

Build order (``build_torchvision``): torchvision model (1000 classes when pretrained) -> load
checkpoint -> input channels -> stem -> classifier for the dataset -> dropout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnbench.models.base import ZooModel, check_choice, check_dropout
from cnnbench.models.pretrained import PretrainedWeights, load_into
from cnnbench.models.registry import STEMS

TORCHVISION_OPTIONS = {
    "stem": "imagenet (torchvision's own) or small (the family's small-image variant for 32/64 px inputs)",
    "dropout": "dropout rate in the head (None keeps the architecture's own)",
    "extra_fc": "keep the 1000-way ImageNet classifier and append Linear(1000, num_classes), as reports 003/004 did",
}


class TorchvisionModel(ZooModel):
    """Base adapter: subclasses set ``first_conv_name`` and implement the feature/head split."""

    first_conv_name: str = ""
    stems: tuple[str, ...] = STEMS
    """The ``stem`` option's values for this family."""
    # Whether the family's own init scales the stem's weights with 1/sqrt(fan-in) (PyTorch's
    # default and DenseNet's Kaiming fan-in), rather than with fan-out (ResNet, VGG) or a fixed
    # std (GoogLeNet, Inception-V3): a fresh stem for other input channels must be rescaled then.
    init_scales_with_fan_in: bool = False

    def __init__(self, net: nn.Module, classifier_name: str, head_names: tuple[str, ...]) -> None:
        super().__init__(classifier_name, head_names)
        for name, child in net.named_children():
            self.add_module(name, child)
        self.extra_fc: nn.Linear | None = None

    def torchvision_head(self, features: torch.Tensor) -> torch.Tensor:
        """The torchvision model's own head: features -> (B, classes of its classifier)."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.torchvision_head(features)
        return logits if self.extra_fc is None else self.extra_fc(logits)

    def use_small_stem(self) -> None:
        """Switch to the family's small-image variant (documented per family)."""
        raise NotImplementedError

    def use_small_pool_stem(self) -> None:
        """The small stem's conv with the ImageNet stem's pooling kept (families listing it in ``stems``)."""
        raise NotImplementedError

    # --- shared surgery -------------------------------------------------------------------

    def replace_first_conv(self, in_channels: int | None = None, kernel_size: int | None = None,
                           stride: int | None = None, padding: int | None = None) -> None:
        """Rebuild the stem convolution with other channels / kernel / stride / padding.

        When the kernel size is unchanged the old weights are kept, adapted to the new channel
        count: pretrained ones summed over RGB for one channel (as timm's ``adapt_input_conv``
        does), fresh ones keeping the family's init scale for the new fan-in; a new kernel size
        starts from torchvision's ResNet conv init (Kaiming-normal, fan-out).
        """
        name = self.first_conv_name
        old: nn.Conv2d = self.get_submodule(name)
        new = nn.Conv2d(in_channels or old.in_channels, old.out_channels,
                        kernel_size=kernel_size or old.kernel_size, stride=stride or old.stride,
                        padding=old.padding if padding is None else padding, bias=old.bias is not None,
                        device=old.weight.device)
        same_kernel = new.weight.shape[2:] == old.weight.shape[2:]
        with torch.no_grad():
            if same_kernel:
                trained = f"{name}.weight" in self.pretrained_parameters
                new.weight.copy_(adapt_input_conv(old.weight, new.in_channels, trained=trained,
                                                  fan_in_init=self.init_scales_with_fan_in))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            else:
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                if new.bias is not None:
                    nn.init.zeros_(new.bias)
        self.replace_module(name, new, keeps_pretrained=same_kernel)

    def add_extra_fc(self, num_classes: int) -> None:
        """Reports 003/004: a Linear(1000, num_classes) after the ImageNet classifier (no activation
        between — the reports describe only 'an extra fully connected layer')."""
        classifier = self.get_classifier()
        out_features = classifier.out_features if isinstance(classifier, nn.Linear) else classifier.out_channels
        self.extra_fc = nn.Linear(out_features, num_classes, device=classifier.weight.device)
        self.classifier_name = "extra_fc"
        self.head_names = self.head_names + ("extra_fc",)

    def set_dropout(self, rate: float) -> None:
        """Set every Dropout in the head to ``rate``."""
        for name in self.head_names:
            for module in self.get_submodule(name).modules():
                if isinstance(module, nn.Dropout):
                    module.p = rate


def adapt_input_conv(weight: torch.Tensor, in_channels: int, *, trained: bool = True,
                     fan_in_init: bool = False) -> torch.Tensor:
    """(O, C, k, k) -> (O, in_channels, k, k).

    Trained weights: summed for one channel, else tiled and rescaled by C / in_channels, so a
    grey or stacked input gets the response the RGB filters give (timm's ``adapt_input_conv``).
    Fresh weights: tiled or sliced as drawn — a sum of three independent draws would start the
    stem sqrt(3) too large — and rescaled by sqrt(C / in_channels) when the init's std goes as
    1/sqrt(fan-in), so the stem starts where the family's init would put it for in_channels.
    """
    channels = weight.shape[1]
    if in_channels == channels:
        return weight
    if trained and in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // channels)
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    if trained:
        return tiled * (channels / in_channels)
    return tiled * (channels / in_channels) ** 0.5 if fan_in_init else tiled


def build_torchvision(adapter: type[TorchvisionModel], torchvision_name: str, *, num_classes: int,
                      in_channels: int, input_size: int, pretrained: PretrainedWeights | None,
                      stem: str = "imagenet", dropout: float | None = None, extra_fc: bool = False,
                      **torchvision_kwargs: Any) -> TorchvisionModel:
    """torchvision model -> adapter, with weights, channels, stem, classifier and dropout set."""
    import torchvision

    del input_size  # torchvision models pool adaptively; create_model has checked the size
    check_choice("stem", stem, adapter.stems)
    check_dropout(dropout)
    check_choice("extra_fc", extra_fc, (True, False))
    imagenet_head = pretrained is not None or extra_fc
    net = torchvision.models.get_model(torchvision_name, weights=None,
                                       num_classes=1000 if imagenet_head else num_classes, **torchvision_kwargs)
    model = adapter(net)
    if pretrained is not None:
        load_into(model, pretrained)
        model.pretrained_parameters = {name for name, _ in model.named_parameters()}
    if in_channels != 3:
        model.replace_first_conv(in_channels=in_channels)
    if stem == "small":
        model.use_small_stem()
    elif stem == "small_pool":
        model.use_small_pool_stem()
    if extra_fc:
        model.add_extra_fc(num_classes)
    elif pretrained is not None and num_classes != 1000:
        model.reset_classifier(num_classes)
    if dropout is not None:
        model.set_dropout(dropout)
    return model
