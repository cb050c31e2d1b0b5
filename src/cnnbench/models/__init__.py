"""Model zoo: a registry of builders with one classifier interface.

    from cnnbench.models import create_model, list_models, get_model_info, freeze_backbone
    model = create_model("resnet18", num_classes=200, input_size=64, stem="small")

Families, one module each, in the order the reports met them: the reports' own nets
(``baselines`` 002, ``deepl18`` 000, ``ting`` 003, ``lenet`` 001), then torchvision's
(``alexnet``, ``squeezenet``, ``vgg``, ``resnet``, ``densenet``, ``inception``) and our
``preact_resnet``.
"""

from cnnbench.models.base import ZooModel, count_parameters, freeze_backbone
from cnnbench.models.summary import build_on_meta, count_flops, describe_model, describe_models, layer_summary, training_flops
from cnnbench.models.init import INIT_SCHEMES
from cnnbench.models.registry import (
    ModelInfo, create_model, get_model_info, list_models, register_model, smallest_input_size)

# Importing a family module registers its builders.
from cnnbench.models import (  # noqa: E402,F401  (imported for registration)
    baselines, deepl18, ting, lenet, alexnet, squeezenet, vgg, resnet, densenet, inception, preact_resnet)

__all__ = [
    "INIT_SCHEMES", "ModelInfo", "ZooModel", "build_on_meta", "count_flops", "count_parameters", "create_model", "describe_model",
    "describe_models", "freeze_backbone", "get_model_info", "layer_summary", "list_models", "register_model",
    "smallest_input_size", "training_flops",
]
