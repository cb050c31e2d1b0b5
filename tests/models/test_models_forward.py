"""Every registered model runs forward and backward at each input size it supports.

Real forward + backward (batch 2) for every report network and for one small configuration
per torchvision family; shape-only forward + backward on the meta device for every model at
every supported size (forward only for the deepest members of a family) (native stem at its native size and at 64 px where it fits, small stem at
32 and 64 px) — meta tensors carry shapes without storage, so VGG-19 at 224 px costs no compute.
"""

from __future__ import annotations

import pytest
import torch

from cnnbench.models import create_model, get_model_info, list_models
from cnnbench.models.base import without_batchnorm

NUM_CLASSES = 7


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def _supported_configs(name):
    """(input_size, options) pairs a model is meant to run at."""
    info = get_model_info(name)
    configs = [(info.input_size, {})]
    if info.input_size > 64 and info.min_input_size <= 64:
        configs.append((64, {}))  # the reports fed 64 px straight into AlexNet / SqueezeNet / ResNet
    if "stem" in info.options:
        configs += [(32, {"stem": "small"}), (64, {"stem": "small"})]
        if name == "inception_v3":  # the auxiliary head needs 77 px even with the small stem
            configs = [(299, {}), (80, {"stem": "small"}), (32, {"stem": "small", "aux_logits": False})]
    if info.family in ("resnet", "preact_resnet"):
        configs.append((64, {"stem": "small_pool"}))
    return configs


META_CASES = [(name, size, opts) for name in list_models() for size, opts in _supported_configs(name)
              # VGG's BN variants differ from the plain ones only in BN, which the meta check strips
              if not (name.startswith("vgg") and name.endswith("_bn") and opts)]
# Backward on the meta device costs seconds for the deepest nets (hundreds of decomposed ops);
# their shallower siblings run the same code, so the deep ones check forward shapes only.
FORWARD_ONLY = {"resnet101", "resnet152", "densenet161", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn"}


@pytest.mark.parametrize("name, size, options", META_CASES,
                         ids=[f"{n}-{s}-{'-'.join(map(str, o.values())) or 'native'}" for n, s, o in META_CASES])
def test_shapes_forward_backward_on_meta(name, size, options):
    with torch.device("meta"):
        model = without_batchnorm(create_model(name, num_classes=NUM_CLASSES, input_size=size, **options))
    channels = model.cnnbench_cfg["in_channels"]
    x = torch.zeros(2, channels, size, size, device="meta")
    model.train()
    outputs = _outputs(model(x))
    assert len(outputs) == 1 + len(model.cnnbench_cfg["aux_weights"])
    assert all(o.shape == (2, NUM_CLASSES) for o in outputs)
    if name not in FORWARD_ONLY:
        sum(o.sum() for o in outputs).backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    model.eval()
    if model.cnnbench_cfg["aux_weights"]:
        assert model(x).shape == (2, NUM_CLASSES)  # eval: a plain tensor even with auxiliary heads
    else:
        assert model.forward_head(model.forward_features(x)).shape == (2, NUM_CLASSES)


# Real compute: every report network (seeded twice: same weights, same output), and one small
# configuration per torchvision family (built once: VGG and AlexNet cost seconds to initialise).
REAL_CASES = [(name, get_model_info(name).input_size, {}, True) for name in list_models()
              if get_model_info(name).input_size <= 64] + [
    ("lenet5", 32, {"padding": "same"}, False),
    ("resnet18", 32, {"stem": "small"}, True), ("resnet18", 64, {}, False), ("resnet18", 32, {"stem": "small_pool"}, False),
    ("preact_resnet18", 32, {"stem": "small"}, True), ("alexnet", 64, {}, False),
    ("squeezenet1_1", 64, {}, False), ("squeezenet1_0", 32, {"stem": "small"}, False),
    ("vgg11_bn", 32, {"stem": "small"}, False), ("densenet121", 32, {"stem": "small"}, False),
    ("googlenet", 32, {"stem": "small"}, False), ("inception_v3", 32, {"stem": "small", "aux_logits": False}, False),
]


@pytest.mark.parametrize("name, size, options, twice", REAL_CASES,
                         ids=[f"{n}-{s}-{'-'.join(map(str, o.values())) or 'native'}" for n, s, o, _ in REAL_CASES])
def test_real_forward_backward(name, size, options, twice):
    def build():
        torch.manual_seed(0)
        return create_model(name, num_classes=NUM_CLASSES, input_size=size, **options)

    model = build()
    channels = model.cnnbench_cfg["in_channels"]
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    if twice:
        again = build()
        model.eval(), again.eval()
        with torch.no_grad():
            assert torch.equal(model(x), again(x)), "same seed, different output"
        del again

    model.train()
    outputs = _outputs(model(x))
    assert [tuple(o.shape) for o in outputs] == [(2, NUM_CLASSES)] * (1 + len(model.cnnbench_cfg["aux_weights"]))
    loss = sum(torch.nn.functional.cross_entropy(o, torch.tensor([0, 1])) for o in outputs)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_googlenet_aux_outputs_in_train_mode_only():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=NUM_CLASSES, input_size=32, stem="small")
    assert model.has_aux and model.cnnbench_cfg["aux_weights"] == [0.3, 0.3]
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert len(model(x)) == 3
    model.eval()
    assert isinstance(model(x), torch.Tensor)


@pytest.mark.parametrize("name", list_models())
def test_reset_classifier_and_l2_layers(name):
    info = get_model_info(name)
    size = info.input_size if info.input_size <= 64 else max(info.min_input_size, 32)
    with torch.device("meta"):
        model = without_batchnorm(create_model(name, num_classes=10, input_size=size))
        model.reset_classifier(3)
    assert model.cnnbench_cfg["num_classes"] == 3
    x = torch.zeros(2, info.in_channels, size, size, device="meta")
    model.train()
    assert all(o.shape == (2, 3) for o in _outputs(model(x)))  # auxiliary heads follow the main one
    modules = dict(model.named_modules())
    for layer in model.l2_layers:  # the names the training side puts its L2 penalty on
        assert isinstance(modules[layer], (torch.nn.Conv2d, torch.nn.Linear)), layer


def test_l2_placement_of_model_e_and_f():
    # Report 000 Table 2: L2 on the third conv of each block, and (E only) on the three FC-4096.
    convs = ["features.conv3", "features.conv6", "features.conv9"]
    with torch.device("meta"):
        assert create_model("deepl18_e").l2_layers == convs + ["head.fc1", "head.fc2", "head.fc3"]
        assert create_model("deepl18_f").l2_layers == convs
        assert create_model("deepl18_d").l2_layers == []
        # Report 002 does not say which layers; every conv and dense layer carries it.
        assert create_model("vgg_like").l2_layers == [f"features.conv{i}" for i in range(1, 7)] + ["head.fc1", "head.fc_out"]


def test_keras_layer_order_and_bn_settings():
    with torch.device("meta"):
        model = create_model("deepl18_b")
    names = [n for n, _ in model.features.named_children()][:3]
    assert names == ["conv1", "relu1", "bn1"]  # "conv, ReLu, BN" as the table writes it
    assert model.features.bn1.eps == 1e-3 and model.features.bn1.momentum == pytest.approx(0.01)
    assert model.features.conv2.kernel_size == (2, 1) and model.features.conv3.kernel_size == (1, 2)


def _block_by_hand(block, x, preactivated_shortcut):
    """He et al. 2016's full pre-activation unit, spelled out."""
    relu = torch.nn.functional.relu
    a = x if block.bn1 is None else relu(block.bn1(x))
    residual = block.conv2(relu(block.bn2(block.conv1(a))))
    into_shortcut = a if preactivated_shortcut else x
    return residual + (into_shortcut if block.shortcut is None else block.shortcut(into_shortcut))


@pytest.mark.parametrize("stem", ["imagenet", "small", "small_pool"])
def test_preact_blocks_pre_activate_where_preresnet_lua_does(stem):
    """The first block of a stage pre-activates before the split (its shortcut sees the
    activated input), except stage 1 after the ImageNet or small_pool stem (both end in BN-ReLU-pool),
    whose input is already BN-ReLU'd;
    the other blocks pre-activate the residual path only."""
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=NUM_CLASSES, input_size=32, stem=stem).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)  # non-trivial BN, so an extra or missing BN-ReLU shows
        bn.weight.data.uniform_(0.5, 1.5)
    first = model.layer1[0]
    assert (first.bn1 is None) == (stem != "small")
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.allclose(first(x), _block_by_hand(first, x, preactivated_shortcut=True), atol=1e-5)
        second = model.layer1[1]
        assert torch.allclose(second(x), _block_by_hand(second, x, preactivated_shortcut=False), atol=1e-5)
        down = model.layer2[0]
        assert torch.allclose(down(x), _block_by_hand(down, x, preactivated_shortcut=True), atol=1e-5)


@pytest.mark.parametrize("name, fan_in_init", [("resnet18", False), ("vgg11", False), ("googlenet", False),
                                               ("alexnet", True), ("densenet121", True)])
def test_fresh_stem_for_grey_input_keeps_the_family_init_scale(name, fan_in_init):
    # A fresh 1-channel stem must start where the family's init puts a 1-channel conv: the same
    # std under fan-out or fixed-std inits, sqrt(3) larger under fan-in ones. Summing three fresh
    # RGB filters (right for pretrained weights) made the fan-out stems sqrt(3) too large.
    def stem_std(in_channels):
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_channels=in_channels, input_size=64)
        return model.get_submodule(model.first_conv_name).weight.std().item()

    expected = stem_std(3) * (3 ** 0.5 if fan_in_init else 1.0)
    assert stem_std(1) == pytest.approx(expected, rel=0.08)
