"""The one classifier interface every cnnbench model has, and the frozen-backbone helper.

Modelled on timm's classifier interface (``forward_features`` / ``forward_head`` /
``reset_classifier``): fine-tuning, feature extraction and ensembling then work the same way
for a torchvision ResNet and for a report's five-layer Keras net.

Every model is split into a *backbone* (the top-level children ``forward_features`` runs) and a
*head* (the top-level children named in ``head_names``, run by ``forward_head``). Fine-tuning
only the head (``freeze_backbone``) trains exactly the head modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnbench.errors import CnnbenchError


class ZooModel(nn.Module):
    """Base class: ``forward(x) == forward_head(forward_features(x))``.

    Attributes every model carries:
      ``cnnbench_cfg``  dict: name, input_size (what to feed it), in_channels, num_classes,
                        mean/std (ImageNet ones when pretrained, else None), source, options.
      ``l2_layers``     module names whose ``weight`` carries the reports' Keras-style L2.
      ``has_aux``       True when train-mode forward returns ``(logits, aux_logits, ...)``.
      ``classifier_name`` dotted name of the final layer that ``reset_classifier`` replaces.
      ``head_names``    top-level children that ``forward_head`` uses.
    """

    has_aux: bool = False

    def __init__(self, classifier_name: str, head_names: tuple[str, ...]) -> None:
        super().__init__()
        self.classifier_name = classifier_name
        self.head_names = tuple(head_names)
        self.cnnbench_cfg: dict[str, Any] = {}
        self.l2_layers: list[str] = []
        self.backbone_frozen = False
        # Names of parameters that came from a pretrained checkpoint (create_model skips them
        # when applying an init scheme).
        self.pretrained_parameters: set[str] = set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone: images (B, C, S, S) -> features (B, C', H', W') or (B, D) for MLPs."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Head: features -> logits (B, num_classes)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final layer (a Linear, or SqueezeNet's 1x1 conv)."""
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a freshly initialised one with ``num_classes`` outputs."""
        self.replace_module(self.classifier_name, resized_classifier(self.get_classifier(), num_classes))
        self.cnnbench_cfg["num_classes"] = num_classes

    def replace_module(self, name: str, module: nn.Module, keeps_pretrained: bool = False) -> None:
        """Swap a submodule; its parameters stop counting as pretrained unless ``keeps_pretrained``."""
        self.set_submodule(name, module)
        if not keeps_pretrained:
            self.pretrained_parameters = {k for k in self.pretrained_parameters if not k.startswith(f"{name}.")}

    def train(self, mode: bool = True) -> "ZooModel":
        """As ``nn.Module.train``, but a frozen backbone keeps its BatchNorm in eval mode."""
        super().train(mode)
        if mode and self.backbone_frozen:
            for name, child in self.named_children():
                if name in self.head_names:
                    continue
                for module in child.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self


def resized_classifier(old: nn.Module, num_classes: int) -> nn.Module:
    """A new layer like ``old`` (Linear or 1x1 Conv2d) with ``num_classes`` outputs, on its device."""
    device = old.weight.device
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=device)
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                         bias=old.bias is not None, device=device)
    raise TypeError(f"cannot resize a classifier of type {type(old).__name__}")


def freeze_backbone(model: ZooModel) -> ZooModel:
    """Fine-tune only the head: backbone parameters stop requiring grad, its BN stays in eval.

    BatchNorm running statistics of a frozen backbone must not drift towards the new dataset
    (they would no longer match the frozen weights), so ``model.train()`` keeps those layers in
    eval mode from now on. Auxiliary heads (Inception-V3, GoogLeNet) exist only to push gradient
    into the backbone, so they are switched off too.
    """
    for name, child in model.named_children():
        trainable = name in model.head_names
        for parameter in child.parameters():
            parameter.requires_grad_(trainable)
    model.backbone_frozen = True
    if model.has_aux:
        model.has_aux = False
        model.cnnbench_cfg["aux_weights"] = []
    model.cnnbench_cfg["finetune"] = "head"
    model.train(model.training)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_choice(option: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise CnnbenchError(f"model option {option}: expected one of {', '.join(map(str, allowed))}, got {value!r}")


def check_dropout(dropout: float | None) -> None:
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0.0 <= dropout < 1.0):
        raise CnnbenchError(f"model option dropout: expected a rate in [0, 1), got {dropout!r}")


def without_batchnorm(model: nn.Module) -> nn.Module:
    """Replace BatchNorm layers by Identity, in place, for throw-away meta-device copies.

    BN changes no shapes and the flop counter counts no FLOPs for it, but on the meta device it
    runs as a long chain of decomposed ops — half the time of counting or probing a ResNet."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            model.set_submodule(name, nn.Identity())
    return model
