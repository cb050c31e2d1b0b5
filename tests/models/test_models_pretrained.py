"""Pretrained weights through a locally saved torchvision state dict, the torch hub cache, and
the offline error; head-only fine-tuning."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model, freeze_backbone
from cnnbench.models import pretrained as pretrained_module

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, dict]:
    """A randomly initialised torchvision ResNet-18 saved as a state dict (stands in for ImageNet weights)."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def no_download(monkeypatch):
    def fail(url, destination):
        raise urllib.error.URLError("offline (test)")
    monkeypatch.setattr(pretrained_module, "download_weights", fail)


def test_local_file_loads_backbone_and_replaces_classifier(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", num_classes=10, pretrained=True, weights=str(path))
    own = model.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(own[key], state[key]), key
    assert own["fc.weight"].shape == (10, 512)
    cfg = model.cnnbench_cfg
    assert cfg["pretrained"] and cfg["weights"] == str(path) and cfg["input_size"] == 224
    assert cfg["mean"] == pytest.approx(IMAGENET_MEAN) and cfg["std"] == pytest.approx(IMAGENET_STD)
    assert "fc.weight" not in model.pretrained_parameters and "conv1.weight" in model.pretrained_parameters


def test_init_scheme_leaves_pretrained_weights_alone(resnet18_file):
    path, state = resnet18_file
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, weights=str(path), init="glorot")
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    bound = (6 / (512 + 10)) ** 0.5
    assert model.fc.weight.abs().max() <= bound and torch.count_nonzero(model.fc.bias) == 0


def test_one_channel_input_sums_the_rgb_filters(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", num_classes=10, in_channels=1, weights=str(path))
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)


def test_small_stem_on_pretrained_backbone(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", num_classes=200, input_size=64, weights=str(path), stem="small")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert "conv1.weight" not in model.pretrained_parameters and model.cnnbench_cfg["input_size"] == 64


def test_extra_fc_keeps_the_imagenet_classifier(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", num_classes=200, weights=str(path), extra_fc=True)
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert model.extra_fc.weight.shape == (200, 1000) and model.classifier_name == "extra_fc"
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 200)


def test_torch_hub_cache_is_used(resnet18_file, tmp_path, monkeypatch, no_download):
    path, state = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's file name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    model = create_model("resnet18", num_classes=10, pretrained=True)
    assert model.cnnbench_cfg["weights"] == str(cached)
    assert torch.equal(model.layer1[1].conv2.weight, state["layer1.1.conv2.weight"])


def test_offline_without_file_names_the_file_and_the_folder(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CnnbenchError) as err:
        create_model("resnet18", num_classes=10, pretrained=True)
    message = str(err.value)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"expected {expected}" in message
    assert f"into {expected.parent}" in message
    # the way out it names must exist: there is no --weights flag; model.weights is the recipe key
    assert "--weights" not in message and "--set model.weights=FILE" in message


def test_wrong_architecture_file_is_refused(tmp_path):
    path = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    with pytest.raises(CnnbenchError, match=r"squeeze.pth: does not match the torchvision layout .* missing"):
        create_model("resnet18", num_classes=10, weights=str(path))


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_missing_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    match = "not a loadable state dict" if content else "weights file not found"
    with pytest.raises(CnnbenchError, match=match):
        create_model("resnet18", num_classes=10, weights=str(path))


def test_squeezenet11_small_stem_keeps_the_pretrained_kernel(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1().state_dict()
    path = tmp_path / "sq.pth"
    torch.save(state, path)
    model = create_model("squeezenet1_1", num_classes=200, input_size=64, weights=str(path), stem="small")
    assert model.features[0].stride == (1, 1) and torch.equal(model.features[0].weight, state["features.0.weight"])
    assert model.classifier[1].weight.shape == (200, 512, 1, 1)


def test_freeze_backbone_trains_only_the_head_with_bn_frozen(resnet18_file):
    path, _ = resnet18_file
    model = freeze_backbone(create_model("resnet18", num_classes=10, input_size=32, weights=str(path)))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    model.train()
    assert not model.bn1.training and not model.layer3[1].bn2.training and model.fc.training
    running = model.layer1[0].bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert torch.equal(model.layer1[0].bn1.running_mean, running)  # statistics did not move
    assert model.conv1.weight.grad is None
    assert model.cnnbench_cfg["finetune"] == "head"


def test_freeze_backbone_switches_auxiliary_heads_off():
    model = freeze_backbone(create_model("googlenet", num_classes=10, input_size=32, stem="small"))
    model.train()
    assert isinstance(model(torch.zeros(2, 3, 32, 32)), torch.Tensor)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"fc"}


@pytest.mark.parametrize("in_channels", [1, 4])
def test_pretrained_googlenet_takes_other_channel_counts(tmp_path, in_channels):
    # torchvision's transform_input rescales exactly three ImageNet-normalised channels; with a
    # 1-channel stem it indexed a channel that is not there (IndexError on the first forward).
    torch.manual_seed(0)
    state = torchvision.models.googlenet(aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "googlenet.pth"
    torch.save(state, path)
    model = create_model("googlenet", num_classes=10, in_channels=in_channels, input_size=64, weights=str(path))
    assert model.conv1.conv.in_channels == in_channels and not model.transform_input
    model.eval()
    assert model(torch.zeros(2, in_channels, 64, 64)).shape == (2, 10)
    rgb = create_model("googlenet", num_classes=10, input_size=64, weights=str(path))
    assert rgb.transform_input  # three channels keep torchvision's [-1, 1] rescaling


def test_densenet_checkpoint_with_torchvisions_legacy_keys_loads(tmp_path):
    """torchvision's DenseNet IMAGENET1K_V1 files predate its module names: keys read
    'denselayer1.norm.1.weight' for 'denselayer1.norm1.weight' (torchvision renames them when it
    loads), and, written before PyTorch 0.4.1, they hold no BN num_batches_tracked."""
    import re

    torch.manual_seed(0)
    state = torchvision.models.densenet121().state_dict()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    model = create_model("densenet121", num_classes=10, input_size=64, weights=str(path))
    own = model.state_dict()
    for key in ("features.denseblock1.denselayer1.norm1.weight", "features.denseblock4.denselayer16.conv2.weight",
                "features.denseblock2.denselayer3.norm2.running_var", "features.conv0.weight"):
        assert torch.equal(own[key], state[key]), key
    assert "features.denseblock1.denselayer1.conv1.weight" in model.pretrained_parameters


def test_a_missing_parameter_is_still_refused(resnet18_file, tmp_path):
    path, state = resnet18_file
    partial = {k: v for k, v in state.items() if k != "layer1.0.bn1.running_mean"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CnnbenchError, match=r"1 missing \(layer1.0.bn1.running_mean\)"):
        create_model("resnet18", num_classes=10, weights=str(tmp_path / "partial.pth"))
