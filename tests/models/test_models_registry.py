"""The registry: names, infos, options, input sizes and init schemes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model, get_model_info, list_models, register_model
from cnnbench.models import registry
from cnnbench.models.registry import accepts_input_size

ALL = list_models()


def test_registry_holds_every_architecture_of_the_issue():
    expected = {
        "logreg", "mlp1", "simple_cnn", "vgg_like",                       # report 002
        *(f"deepl18_{c}" for c in "abcdef"),                                # report 000
        "ting_m1", "ting_m4", "alexnet_extra_fc", "preact_resnet34",        # report 003
        "lenet5",                                                           # report 001
        "alexnet", "squeezenet1_0", "squeezenet1_1", "densenet121", "densenet161", "inception_v3", "googlenet",
        *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152)), "preact_resnet18",
    }
    assert expected == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_info_is_complete(name):
    info = get_model_info(name)
    assert info.name == name
    assert info.source and info.description and "\n" not in info.description
    assert info.input_size in (28, 64, 224, 299)
    assert 1 <= info.min_input_size <= info.input_size


@pytest.mark.parametrize("name", ALL)
def test_min_input_size_is_exact(name):
    """The registered smallest size runs a train-mode forward, one pixel less does not."""
    info = get_model_info(name)
    assert accepts_input_size(name, info.min_input_size, info.in_channels, ())
    if info.min_input_size > 1:
        assert not accepts_input_size(name, info.min_input_size - 1, info.in_channels, ())


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        @register_model(family="x", source="x", description="x", input_size=64, min_input_size=1)
        def resnet18(**kwargs):  # noqa: F811 - the point of the test
            raise AssertionError("never built")


def test_new_builder_is_listed(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(family="test", source="test", description="one linear layer", input_size=8, min_input_size=1)
    def tiny_test_net(**kwargs):
        return create_model("logreg", **{k: v for k, v in kwargs.items() if k != "pretrained"})

    assert "tiny_test_net" in list_models() and list_models("test") == ["tiny_test_net"]


def test_unknown_name_lists_close_matches():
    with pytest.raises(CnnbenchError, match=r"unknown model 'resnet19': did you mean .*resnet18"):
        create_model("resnet19")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(CnnbenchError, match=r"unknown option 'stemm'; valid options: stem, dropout, extra_fc"):
        create_model("resnet18", stemm="small")


@pytest.mark.parametrize("options, match", [
    ({"stem": "tiny"}, "stem: expected one of imagenet, small, small_pool, got 'tiny'"),
    ({"dropout": 1.5}, r"dropout: expected a rate in \[0, 1\)"),
    ({"padding": "full"}, "padding: expected one of valid, same"),
    ({"stem": ["small"]}, "option stem expects a single value"),
])
def test_bad_option_values(options, match):
    name = "deepl18_a" if "padding" in options else "resnet18"
    with pytest.raises(CnnbenchError, match=match):
        create_model(name, input_size=64, **options)


@pytest.mark.parametrize("name", ["densenet121", "vgg11", "alexnet", "squeezenet1_1", "googlenet"])
def test_small_pool_stem_is_the_resnet_families_own(name):
    with pytest.raises(CnnbenchError, match="stem: expected one of imagenet, small, got 'small_pool'"):
        create_model(name, input_size=64, stem="small_pool")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_small_pool_stem_keeps_the_pool_after_a_3x3_stride_1_conv(name):
    imagenet = create_model(name, num_classes=10, input_size=64)
    pooled = create_model(name, num_classes=10, input_size=64, stem="small_pool")
    assert (pooled.conv1.kernel_size, pooled.conv1.stride, pooled.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(pooled.maxpool, nn.MaxPool2d)
    assert pooled.state_dict().keys() == imagenet.state_dict().keys()  # torchvision's names stay
    x = torch.randn(2, 3, 64, 64)
    stem = pooled.maxpool(pooled.relu(pooled.bn1(pooled.conv1(x))))
    assert stem.shape[-2:] == (32, 32)  # layer1 at S/2 (S/4 with the ImageNet stem)
    assert pooled.forward_features(x).shape[-2:] == (4, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 0}, "num_classes: expected a positive integer"),
    ({"input_size": -3}, "input_size: expected a positive integer"),
    ({"init": "xavier"}, "init: expected one of default, normal, he, glorot"),
    ({"pretrained": True}, "has no ImageNet weights"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(CnnbenchError, match=match):
        create_model("ting_m1", **kwargs)


def test_28px_into_imagenet_alexnet_is_refused_with_the_smallest_size():
    # 28 -> conv 11x11/4 -> 6 -> pool -> 2 -> conv 5x5 -> 2 -> pool 3x3/2: nothing left.
    with pytest.raises(CnnbenchError) as err:
        create_model("alexnet", num_classes=10, input_size=28)
    message = str(err.value)
    assert "cannot take 28x28 input: the smallest it accepts is 63 px" in message
    assert "data.input_size: 224" in message
    assert "stem: small" in message and "from 15 px" in message


def test_inception_at_64px_names_both_ways_out():
    with pytest.raises(CnnbenchError) as err:
        create_model("inception_v3", num_classes=10, input_size=64, stem="small")
    assert "smallest it accepts is 77 px" in str(err.value)
    assert "aux_logits: false" in str(err.value)


def test_keras_net_too_small_is_refused():
    with pytest.raises(CnnbenchError, match="smallest it accepts is 28 px"):
        create_model("deepl18_a", input_size=27)


def test_cfg_records_what_to_feed():
    with torch.device("meta"):
        model = create_model("lenet5", num_classes=10)
    cfg = model.cnnbench_cfg
    assert (cfg["name"], cfg["input_size"], cfg["in_channels"], cfg["num_classes"]) == ("lenet5", 28, 1, 10)
    assert cfg["mean"] is None and cfg["std"] is None and cfg["pretrained"] is False
    assert cfg["source"].startswith("LeCun")


def _conv_and_linear(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_init_normal_is_keras_random_normal():
    torch.manual_seed(0)
    model = create_model("deepl18_a", init="normal")
    fc1 = model.head.fc1.weight  # 2000 x 2048 draws
    assert abs(fc1.std().item() - 0.05) < 0.001 and abs(fc1.mean().item()) < 0.001
    assert all(torch.count_nonzero(m.bias) == 0 for m in _conv_and_linear(model))


def test_init_he_and_glorot_scales():
    torch.manual_seed(0)
    he = create_model("deepl18_d", init="he")
    fan_in = 2000
    assert he.head.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.01)
    glorot = create_model("deepl18_d", init="glorot")
    bound = math.sqrt(6 / (2000 + 2048))
    weight = glorot.head.fc1.weight
    assert weight.abs().max().item() <= bound
    assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    assert all(torch.count_nonzero(m.bias) == 0 for m in _conv_and_linear(glorot))


def test_default_init_keeps_torchvision_init():
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10, input_size=64)
    # torchvision: final conv N(0, 0.01), other convs kaiming_uniform, biases 0
    assert abs(model.classifier[1].weight.std().item() - 0.01) < 0.002
    assert torch.count_nonzero(model.features[0].bias) == 0
