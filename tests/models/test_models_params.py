"""Parameter and FLOP counts against independently known values.

torchvision's published counts (its docs / weights metadata) at 1000 classes, and for the
reports' own networks the counts derived by hand from their tables (arithmetic below: a conv
has k_h*k_w*C_in*C_out weights + C_out biases, a dense layer n_in*n_out + n_out, a BN layer
2*C trainable parameters).
"""

from __future__ import annotations

import pytest
import torch

from cnnbench.models import build_on_meta, count_flops, count_parameters, training_flops
from cnnbench.models.base import without_batchnorm

PUBLISHED_1000 = {
    "resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544, "alexnet": 61_100_840,
    "squeezenet1_0": 1_248_424, "squeezenet1_1": 1_235_496, "densenet121": 7_978_856,
    "densenet161": 28_681_000, "inception_v3": 27_161_264, "googlenet": 6_624_904,
}


@pytest.mark.parametrize("name, expected", PUBLISHED_1000.items())
def test_torchvision_published_counts(name, expected):
    # torchvision counts GoogLeNet without its auxiliary heads, Inception-V3 with its one.
    options = {"aux_logits": False} if name == "googlenet" else {}
    assert count_parameters(build_on_meta(name, num_classes=1000, **options)) == expected


def conv(k_h, k_w, c_in, c_out):
    return k_h * k_w * c_in * c_out + c_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


# Report 000, 64x64x3, Keras 'valid' padding: 64 -2x2-> 63 -2x1-> 62x63 -1x2-> 62 -pool-> 31
# -> 30, 29, 28 -pool-> 14 -> 13, 12, 11 -pool-> 5: the FC layer sees 5*5*80 = 2000 inputs.
DEEPL18_CONVS = (conv(2, 2, 3, 32) + conv(2, 1, 32, 32) + conv(1, 2, 32, 32)      # 416 + 2,080 + 2,080
                 + conv(2, 2, 32, 48) + 2 * conv(2, 2, 48, 48)                     # 6,192 + 2 * 9,264
                 + conv(2, 2, 48, 80) + 2 * conv(2, 2, 80, 80))                    # 15,440 + 2 * 25,680
CONV_BN = 2 * (3 * 32 + 3 * 48 + 3 * 80)                                            # 960
HAND_COUNTS = {
    "deepl18_a": DEEPL18_CONVS + dense(2000, 2048) + dense(2048, 200),             # 4,603,944
    "deepl18_b": DEEPL18_CONVS + CONV_BN + dense(2000, 2048) + 2 * 2048 + dense(2048, 200),
    "deepl18_c": DEEPL18_CONVS + dense(2000, 2048) + dense(2048, 200),             # dropout has no weights
    "deepl18_d": DEEPL18_CONVS + CONV_BN + dense(2000, 2048) + 2 * 2048 + dense(2048, 200),
    "deepl18_e": (DEEPL18_CONVS + CONV_BN + dense(2000, 4096) + 2 * dense(4096, 4096) + 3 * 2 * 4096
                  + dense(4096, 200)),                                             # 42,699,752
    "deepl18_f": DEEPL18_CONVS + CONV_BN + dense(2000, 200),                       # 497,256
    # Report 002, 64x64x3: logistic regression on 64*64*3 = 12,288 inputs.
    "logreg": dense(12288, 200),                                                   # 2,457,800
    "mlp1": dense(12288, 1024) + dense(1024, 200),                                 # 12,788,936
    # simple CNN: 64 -> 62 -> 60 -pool-> 30: 30*30*32 = 28,800 inputs to FC-1024.
    "simple_cnn": conv(3, 3, 3, 32) + conv(3, 3, 32, 32) + dense(28800, 1024) + dense(1024, 200),
    # VGG-like: 64 -> 60 -> 30 -> 26 -> 13 -> 9 -> 4: 4*4*128 = 2,048 inputs.
    "vgg_like": (conv(3, 3, 3, 32) + conv(3, 3, 32, 32) + conv(3, 3, 32, 64) + conv(3, 3, 64, 64)
                 + conv(3, 3, 64, 128) + conv(3, 3, 128, 128) + dense(2048, 1024) + dense(1024, 200)),
    # Report 003 (PyTorch padding 0). M1: 64 -5x5-> 60 -> 30 -3x3-> 28 -> 14 -> 12 -> 6: 6*6*32 = 1,152.
    "ting_m1": conv(5, 5, 3, 16) + conv(3, 3, 16, 16) + conv(3, 3, 16, 32) + dense(1152, 256) + dense(256, 200),
    # M4: 64 -> 60 -> 56 -> 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4: 4*4*128 = 2,048.
    "ting_m4": (conv(5, 5, 3, 32) + conv(5, 5, 32, 32) + conv(3, 3, 32, 64) + 2 * conv(3, 3, 64, 64)
                + conv(3, 3, 64, 128) + dense(2048, 256) + dense(256, 200)),       # 770,216
    # Report 001: LeNet-5 on 28x28x1: 28 -> 24 -> 12 -> 8 -> 4: 16*4*4 = 256 inputs to FC-120.
    "lenet5": conv(5, 5, 1, 6) + conv(5, 5, 6, 16) + dense(256, 120) + dense(120, 84) + dense(84, 200),  # 60,576
    # Report 003's AlexNet: torchvision's 61,100,840 plus the extra FC 1000 -> 200.
    "alexnet_extra_fc": 61_100_840 + dense(1000, 200),
}


@pytest.mark.parametrize("name, expected", HAND_COUNTS.items())
def test_report_networks_match_hand_counts(name, expected):
    assert count_parameters(build_on_meta(name, num_classes=200)) == expected


def test_hand_counts_spelled_out():
    assert HAND_COUNTS["deepl18_a"] == 4_603_944 and HAND_COUNTS["ting_m1"] == 354_744
    assert HAND_COUNTS["lenet5"] == 60_576 and HAND_COUNTS["vgg_like"] == 2_590_184


def test_preact_resnet18_differs_from_resnet18_only_in_bn_placement():
    # ResNet-18 BN: stem 64; per stage 2 blocks x 2 BN(width), plus a downsample BN in stages 2-4.
    resnet_bn = 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512)                      # 9,600
    # Pre-activation: stem BN 64; each block BN(in) + BN(out), except that the first block after
    # the ImageNet stem (already BN-ReLU) has no BN(in) (preresnet.lua's 'no_preact'); a final
    # BN(512); no shortcut BN.
    preact_bn = 2 * (64 + 64 + (64 + 64) + (64 + 128) + (128 + 128) + (128 + 256) + (256 + 256)
                     + (256 + 512) + (512 + 512) + 512)                            # 7,808
    expected = PUBLISHED_1000["resnet18"] - resnet_bn + preact_bn
    assert count_parameters(build_on_meta("preact_resnet18", num_classes=1000)) == expected == 11_687_720
    # The small stem is a bare conv: the first block pre-activates it, so it has its BN(in).
    assert count_parameters(build_on_meta("preact_resnet18", num_classes=1000, stem="small")) == (
        expected - 3 * 64 * 49 + 3 * 64 * 9 - 2 * 64 + 2 * 64)


@pytest.mark.parametrize("name", ["alexnet", "squeezenet1_1", "vgg16", "resnet18", "resnet50", "densenet121",
                                  "inception_v3", "googlenet"])
def test_forward_flops_match_torchvision_published_gflops(name):
    """torchvision publishes multiply-adds ("GFLOPS" in its weights metadata); the flop counter
    counts 2 FLOPs per multiply-add."""
    import torchvision

    published = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].meta["_ops"]
    model = without_batchnorm(build_on_meta(name, num_classes=1000))
    assert count_flops(model) / 2e9 == pytest.approx(published, abs=0.0006)


def test_logreg_flops_by_hand():
    # one (1 x 12288) @ (12288 x 200) matmul: 2 * 12288 * 200 FLOPs per image
    assert count_flops(build_on_meta("logreg")) == 2 * 12288 * 200


def test_resnet18_training_flops_at_64px_match_the_anchor():
    # shared/ANCHORS.md: "ResNet-18 at 64 px costs 0.87 GFLOP per training image"
    model = build_on_meta("resnet18", num_classes=200, input_size=64)
    assert training_flops(model, 64, 3) / 1e9 == pytest.approx(0.87, abs=0.01)


def test_small_stem_costs_about_16x_at_64px():
    native = count_flops(without_batchnorm(build_on_meta("resnet18", num_classes=200, input_size=64)))
    small = count_flops(without_batchnorm(build_on_meta("resnet18", num_classes=200, input_size=64, stem="small")))
    # every layer after the stem sees 4x4 = 16 times more pixels
    assert 14 < small / native < 16.5
    assert small / 1e9 == pytest.approx(4.45, abs=0.05)


def test_small_pool_stem_costs_about_4x_at_64px():
    native = count_flops(without_batchnorm(build_on_meta("resnet18", num_classes=200, input_size=64)))
    pooled = count_flops(without_batchnorm(build_on_meta("resnet18", num_classes=200, input_size=64,
                                                         stem="small_pool")))
    # every layer after the max-pool sees 2x2 = 4 times more pixels; the 3x3 stem conv is cheaper
    # than the 7x7 one but runs on 4x the pixels
    assert 3.6 < pooled / native < 4.0
