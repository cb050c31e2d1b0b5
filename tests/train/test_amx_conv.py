"""The AMX kernels (amx_conv.cpp): AmxConv2d's weight gradient and the small-map pixel-pair convolutions, torch's numbers to bf16 rounding, where they switch in, and where not."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models import create_model
from cnnbench.train import amx_conv
from cnnbench.train.amx_conv import AmxConv2d, eligible, use_amx_convs

needs_amx = pytest.mark.skipif(not amx_conv.cpu_has_amx(), reason="this CPU has no AMX-BF16")
CL = torch.channels_last


def bf16_cl(*shape, generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(torch.bfloat16).contiguous(memory_format=CL)


def weight_grad(x, grad, k, stride=1, dtype=None):
    """torch's weight gradient of a padding-k//2 convolution (in float64 for the reference)."""
    x, grad = (x, grad) if dtype is None else (x.to(dtype), grad.to(dtype))
    w = torch.zeros(grad.shape[1], x.shape[1], k, k, dtype=x.dtype).contiguous(memory_format=CL)
    return torch.ops.aten.convolution_backward(grad, x, w, None, [stride] * 2, [k // 2, k // 2], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]


def kernel():
    assert amx_conv.load() is None, amx_conv.load_error()
    return amx_conv.AMX_CONV.module


@needs_amx
@pytest.mark.parametrize("batch, h, w, cin, cout, k, stride", [
    (2, 5, 7, 32, 64, 3, 1),     # odd, rectangular map; grid rows of 8 positions
    (3, 16, 16, 64, 64, 3, 1),   # ResNet-18's layer1 at 64 px
    (4, 8, 8, 128, 128, 3, 1),   # layer2
    (2, 1, 1, 32, 32, 3, 1),     # a 1x1 map: only the centre tap sees a pixel
    (2, 9, 6, 32, 96, 5, 1),     # 5x5 kernel, padding 2
    (2, 6, 6, 64, 32, 1, 1),     # 1x1 kernel: no padding, the grid is the map
    (1, 40, 33, 32, 32, 3, 1),   # more grid positions than one chunk per thread, uneven split
    (3, 16, 16, 64, 128, 3, 2),  # layer2's first convolution: four phase maps, taps shifted by 0 or -1
    (3, 16, 16, 64, 128, 1, 2),  # its 1x1 shortcut: one phase
    (2, 9, 7, 32, 32, 3, 2),     # odd maps: the last phase rows and columns are short
    (2, 11, 10, 32, 64, 7, 2),   # 7x7 stride 2, padding 3 (an ImageNet stem's shape): taps shifted by -2 to 1
    (2, 10, 9, 32, 32, 5, 3),    # stride 3: nine phases
    # few input channels: each position's kernel-row window of k x C values is one masked load
    (3, 20, 18, 3, 64, 7, 2),    # an ImageNet stem on RGB: 21 values, the windows cut at both edges
    (2, 9, 7, 3, 32, 3, 1),      # a 3x3 convolution on RGB
    (2, 8, 8, 8, 32, 3, 2),      # 24 values, stride 2
    (2, 5, 6, 16, 32, 1, 1),     # 1x1: the window is the pixel
])
def test_weight_grad_matches_float64_as_closely_as_onednn(batch, h, w, cin, cout, k, stride):
    g = torch.Generator().manual_seed(batch * 1000 + h * 10 + k)
    x = bf16_cl(batch, cin, h, w, generator=g)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1  # padding k // 2
    grad = bf16_cl(batch, cout, ho, wo, generator=g)
    ours = kernel().weight_grad(x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1), k, stride, k // 2)
    assert ours.dtype == torch.bfloat16 and ours.shape == (cout, cin, k, k) and ours.is_contiguous(memory_format=CL)
    exact = weight_grad(x, grad, k, stride, torch.float64)
    onednn = weight_grad(x, grad, k, stride)
    scale = exact.abs().max().item()
    err_ours = (ours.double() - exact).abs()
    # fp32 sums rounded once to bf16: within one bf16 step (2^-8 relative) of the exact value, plus
    # the fp32 accumulation's error, small against the largest value
    assert (err_ours <= exact.abs() * 2 ** -8 + 1e-4 * scale).all()
    assert err_ours.max().item() <= 1.5 * (onednn.double() - exact).abs().max().item() + 1e-6 * scale
    # the same bits on a second call (the threads' sums are added in a fixed order)
    assert torch.equal(ours, kernel().weight_grad(x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1), k, stride, k // 2))


@needs_amx
def test_weight_grad_rejects_what_it_cannot_take():
    g = torch.Generator().manual_seed(0)
    x, grad = bf16_cl(2, 32, 4, 4, generator=g).permute(0, 2, 3, 1), bf16_cl(2, 32, 4, 4, generator=g).permute(0, 2, 3, 1)
    cases = [
        ((x.float(), grad, 3, 1, 1), "x: expected a contiguous bf16"),
        ((x, grad.transpose(1, 2), 3, 1, 1), "grad: expected a contiguous bf16"),
        ((x, grad[:, :3].contiguous(), 3, 1, 1), r"grad: expected the output map \(2, 4, 4\), got \(2, 3, 4\)"),
        ((x, grad, 3, 2, 1), r"grad: expected the output map \(2, 2, 2\)"),
        ((x[..., :16].contiguous(), grad, 3, 1, 1), r"channels: expected a multiple of 32 out and in \(or at most 32 / k in\), got 16 in and 32 out"),
        ((x, grad[..., :16].contiguous(), 3, 1, 1), "got 32 in and 16 out"),
        ((x, grad, 3, 1, 3), "expected k >= 1, stride >= 1, 0 <= padding < k, got 3, 1, 3"),
        # a "valid" 3x3 convolution: its last taps read x beyond the output map's grid
        ((x, grad[:, :2, :2].contiguous(), 3, 1, 0), "3, 1, 0 on a 4 x 4 map read pixels beyond the output map's grid"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            kernel().weight_grad(*args)


def small_map_kernels(x, weight, upstream, stride, padding):
    """The three pixel-pair kernels on (B, C, H, W) tensors: (output, input gradient, weight gradient)."""
    b, c, h, w = x.shape
    o, k = weight.shape[0], weight.shape[-1]
    x3 = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    grad3 = upstream.permute(0, 2, 3, 1).reshape(b, -1, o)
    return (kernel().small_map_forward(x3, weight, h, w, stride, padding),
            kernel().small_map_input_grad(grad3, weight, h, w, stride, padding),
            kernel().small_map_weight_grad(x3, grad3, h, w, k, stride, padding))


@needs_amx
@pytest.mark.parametrize("batch, h, w, cin, cout, k, stride, padding", [
    # (the forward pass packs x where x is under half the weight: the first two and the rectangular map; else the weight)
    (40, 2, 2, 32, 256, 3, 1, 1),  # ResNet-18's layer4 at 64 px (narrower in); a batch that is no multiple of 32
    (3, 1, 1, 32, 64, 3, 1, 1),    # a 1x1 map: only the centre tap joins a pixel pair, the others are zeros
    (40, 2, 2, 64, 32, 3, 1, 1),   # layer4 with fewer outputs
    (33, 3, 3, 32, 32, 5, 1, 2),   # a 5x5 kernel, padding 2, covering a 3x3 map
    (64, 2, 1, 32, 96, 3, 1, 1),   # a rectangular map
    (37, 4, 4, 64, 32, 3, 1, 1),   # layer3 at 64 px
    (32, 8, 8, 32, 64, 3, 2, 1),   # layer3's strided first convolution
    (16, 4, 4, 32, 32, 1, 2, 0),   # a strided 1x1 shortcut: 3 of 4 input pixels get zero gradients
    (5, 5, 6, 32, 32, 3, 1, 0),    # no padding
])
def test_small_map_kernels_match_float64(batch, h, w, cin, cout, k, stride, padding):
    g = torch.Generator().manual_seed(batch + 10 * h + k)
    x = bf16_cl(batch, cin, h, w, generator=g)
    weight = (torch.randn(cout, cin, k, k, generator=g) * 0.1).to(torch.bfloat16).contiguous(memory_format=CL)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    upstream = bf16_cl(batch, cout, ho, wo, generator=g)
    out, grad_x, grad_w = small_map_kernels(x, weight, upstream, stride, padding)
    assert out.shape == (batch, ho * wo, cout) and grad_x.shape == (batch, h * w, cin)
    assert grad_w.dtype == torch.bfloat16 and grad_w.shape == (cout, cin, k, k) and grad_w.is_contiguous(memory_format=CL)
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    exact = F.conv2d(x64, w64, None, stride, padding)
    exact_dx, exact_dw = torch.autograd.grad(exact, [x64, w64], upstream.double())
    as_maps = (out.view(batch, ho, wo, cout).permute(0, 3, 1, 2), grad_x.view(batch, h, w, cin).permute(0, 3, 1, 2),
               grad_w)
    for got, want in zip(as_maps, (exact, exact_dx, exact_dw)):
        # each value an fp32 sum over its pixel pairs and channels (or the batch), rounded once to bf16
        scale = want.abs().max().item()
        assert ((got.double() - want).abs() <= want.abs() * 2 ** -8 + 1e-4 * scale).all()
        assert (got.double() == want.to(torch.bfloat16).double()).float().mean() > 0.99
    if h * w == 1:  # taps that join no pair: exact zeros
        assert torch.count_nonzero(grad_w[:, :, [0, 0, 2, 2], [0, 2, 0, 2]]) == 0
    if k == 1 and stride == 2:  # pixels no tap reads: exact zeros
        assert torch.count_nonzero(as_maps[1][:, :, 1::2]) == 0 and torch.count_nonzero(as_maps[1][:, :, :, 1::2]) == 0
    # each output tile is one thread's: the same bits every call and on any thread count
    assert all(torch.equal(a, b) for a, b in zip((out, grad_x, grad_w), small_map_kernels(x, weight, upstream, stride, padding)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert all(torch.equal(a, b) for a, b in zip((out, grad_x, grad_w),
                                                     small_map_kernels(x, weight, upstream, stride, padding)))
    finally:
        torch.set_num_threads(threads)


@needs_amx
def test_small_map_kernels_reject_what_they_cannot_take():
    x, grad = torch.zeros(4, 4, 32, dtype=torch.bfloat16), torch.zeros(4, 4, 64, dtype=torch.bfloat16)
    weight = torch.zeros(64, 32, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=CL)
    cases = [
        ("small_map_forward", (x.float(), weight, 2, 2, 1, 1), r"x: expected a contiguous bf16 \(B, H\*W, C\) tensor"),
        ("small_map_forward", (x[:, :3].contiguous(), weight, 2, 2, 1, 1),
         r"x: expected \(B, 4, 32\) for a 2 x 2 map, channels in multiples of 32, got \[4, 3, 32\]"),
        ("small_map_forward", (x, weight.contiguous(), 2, 2, 1, 1),
         r"weight: expected a channels_last bf16 \(O, C, k, k\) tensor with O and C multiples of 32, got \[64, 32, 3, 3\]"),
        ("small_map_forward", (x, weight[:48], 2, 2, 1, 1), "with O and C multiples of 32, got \\[48, 32, 3, 3\\]"),
        ("small_map_forward", (x, weight, 1, 1, 1, 0), "k, stride, padding: 3, 1, 0 do not fit a 1 x 1 map"),
        ("small_map_input_grad", (grad[:, :, :32].contiguous(), weight, 2, 2, 1, 1),
         r"grad: expected \(B, 4, 64\) for a 2 x 2 map"),
        ("small_map_input_grad", (grad.transpose(0, 1), weight, 2, 2, 1, 1), "grad: expected a contiguous bf16"),
        ("small_map_weight_grad", (x, grad[:3], 2, 2, 3, 1, 1), r"grad: expected \(4, 4, C\) for a 2 x 2 map"),
        ("small_map_weight_grad", (x, grad[:, :, :16].contiguous(), 2, 2, 3, 1, 1), "channels in multiples of 32, got"),
        ("small_map_weight_grad", (x, grad, 2, 2, 3, 0, 1), "k, stride, padding: 3, 0, 1 do not fit"),
    ]
    for name, args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            getattr(kernel(), name)(*args)


@needs_amx
@pytest.mark.parametrize("batch, cin, h, w, cout, k, stride", [
    (4, 3, 64, 64, 64, 7, 2),  # ResNet-18's stem at 64 px
    (3, 3, 37, 29, 32, 7, 2),  # odd sizes: a last tile of a few output pixels
    (2, 3, 20, 33, 64, 7, 1),
    (2, 4, 15, 15, 32, 5, 3),
    (2, 1, 9, 40, 96, 9, 2),   # one channel, three blocks of 32 outputs
])
def test_window_forward_matches_float64(batch, cin, h, w, cout, k, stride):
    g = torch.Generator().manual_seed(cin + h + k)
    x = bf16_cl(batch, cin, h, w, generator=g)
    weight = (torch.randn(cout, cin, k, k, generator=g) / k).to(torch.bfloat16).contiguous(memory_format=CL)
    out = kernel().window_forward(x.permute(0, 2, 3, 1), weight, stride, k // 2)
    exact = F.conv2d(x.double(), weight.double(), None, stride, k // 2)
    assert out.shape == exact.shape and out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CL)
    # an fp32 sum over the kernel rows, rounded once to bf16 (as oneDNN's)
    scale = exact.abs().max().item()
    assert ((out.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-4 * scale).all()
    assert (out.double() == exact.to(torch.bfloat16).double()).float().mean() > 0.99
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(out, kernel().window_forward(x.permute(0, 2, 3, 1), weight, stride, k // 2))
    finally:
        torch.set_num_threads(threads)


@needs_amx
def test_window_forward_leaves_non_finite_images_to_torch():
    """A tile row reads past its window (into zero weights): an infinity there would make NaN, so the kernel
    declines any image holding one, and the stem runs torch's convolution for that batch."""
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(3, 32, 7, stride=2, padding=3, bias=False).to(memory_format=CL)
    assert use_amx_convs(conv) == 1
    x = torch.randn(2, 3, 16, 16, generator=g).contiguous(memory_format=CL)
    x[0, 1, 0, 15] = float("inf")
    assert kernel().window_forward(x.to(torch.bfloat16).permute(0, 2, 3, 1), conv.weight.to(torch.bfloat16).contiguous(
        memory_format=CL), 2, 3) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x.requires_grad_())
        expected = F.conv2d(x, conv.weight, None, 2, 3)
    assert torch.equal(y, expected)  # oneDNN's own: inf or NaN only in the windows that read the pixel
    assert torch.isfinite(y[1]).all() and torch.isfinite(y[0, :, :, :5]).all()


@needs_amx
def test_window_forward_rejects_what_it_cannot_take():
    x = torch.zeros(2, 8, 8, 3, dtype=torch.bfloat16)
    weight = torch.zeros(32, 3, 7, 7, dtype=torch.bfloat16).contiguous(memory_format=CL)
    cases = [
        ((x.float(), weight, 2, 3), r"x: expected a contiguous bf16 \(N, H, W, C\) tensor"),
        ((x, weight.contiguous(), 2, 3), r"weight: expected a channels_last bf16 \(O, 3, k, k\) tensor, O a multiple of 32"),
        ((x, weight[:16], 2, 3), r"O a multiple of 32 and k \* 3 <= 32, got \[16, 3, 7, 7\]"),
        ((torch.zeros(2, 8, 8, 5, dtype=torch.bfloat16), torch.zeros(32, 5, 7, 7, dtype=torch.bfloat16).contiguous(
            memory_format=CL), 2, 3), r"k \* 5 <= 32, got \[32, 5, 7, 7\]"),
        ((x[:, :4, :4].contiguous(), weight, 2, 1), "k, stride, padding: 7, 2, 1 do not fit a 4 x 4 map"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            kernel().window_forward(*args)


@needs_amx
@pytest.mark.parametrize("bias", [False, True])
def test_amx_conv2d_trains_like_conv2d(bias):
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(64, 32, 3, padding=1, bias=bias).to(memory_format=CL)
    ours = nn.Conv2d(64, 32, 3, padding=1, bias=bias).to(memory_format=CL)
    ours.load_state_dict(conv.state_dict())
    assert eligible(ours) and use_amx_convs(ours) == 1 and type(ours) is AmxConv2d
    x = torch.randn(4, 64, 10, 10, generator=g).contiguous(memory_format=CL)
    up = torch.randn(4, 32, 10, 10, generator=g)
    outs, grads = [], []
    for layer in (conv, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        y.float().backward(up)
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    assert torch.equal(outs[0], outs[1])  # the same oneDNN forward pass
    assert torch.equal(grads[0][0], grads[1][0])  # and input gradient
    # the weight gradient: bf16 sums in another order, widened to the float32 weight
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=2 ** -7, atol=1e-3 * grads[0][1].abs().max().item())
    if bias:  # bf16 like autocast's: the sum of the bf16 output gradient
        torch.testing.assert_close(grads[1][2], grads[0][2], rtol=2 ** -7, atol=1e-2)


@needs_amx
def test_amx_conv2d_leaves_other_passes_to_torch(monkeypatch):
    conv = nn.Conv2d(64, 32, 3, padding=1).to(memory_format=CL)
    assert use_amx_convs(conv) == 1
    calls = []
    real = amx_conv._AmxConv.apply
    monkeypatch.setattr(amx_conv._AmxConv, "apply", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 64, 6, 6)
    expected = F.conv2d(x, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv(x), expected)  # fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x.contiguous(memory_format=CL))  # inference
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)  # NCHW input
        assert not calls
        conv(x.contiguous(memory_format=CL))
    assert calls == [1]


def test_eligible_convolutions():
    assert eligible(nn.Conv2d(64, 64, 3, padding=1)) and eligible(nn.Conv2d(64, 96, 5, padding="same"))
    assert eligible(nn.Conv2d(64, 128, 1)) and eligible(nn.Conv2d(64, 128, 3, stride=2, padding=1))
    assert eligible(nn.Conv2d(128, 32, 3, padding=1)) and eligible(nn.Conv2d(64, 64, 7, stride=2, padding=3))
    assert eligible(nn.Conv2d(3, 64, 7, stride=2, padding=3)) and eligible(nn.Conv2d(4, 32, 7, padding=3))
    # where the kernel measured no faster than oneDNN: 32 input channels, few-channel windows under small kernels
    for conv in (nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(32, 128, 1), nn.Conv2d(3, 32, 3, padding=1),
                 nn.Conv2d(3, 64, 5, padding=2), nn.Conv2d(16, 64, 1), nn.Conv2d(5, 64, 7, padding=3)):
        assert not eligible(conv), conv
    for conv in (nn.Conv2d(64, 64, 3, stride=(1, 2), padding=1), nn.Conv2d(64, 64, 3), nn.Conv2d(12, 64, 3, padding=1),
                 nn.Conv2d(64, 48, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1, groups=2),
                 nn.Conv2d(64, 64, 3, padding=2, dilation=2), nn.Conv2d(64, 64, (3, 1), padding=(1, 0)),
                 nn.Conv2d(64, 64, 4, padding="same"), nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect")):
        assert not eligible(conv), conv


@needs_amx
def test_resnet18_switches_all_its_convolutions():
    model = create_model("resnet18", num_classes=10, input_size=64)
    # all 20: the stem (a 7x7 window of 3 channels is 21 values), 4 in layer1, 5 in each later
    # stage (3 x 3 convolutions and the 1x1 shortcut)
    assert use_amx_convs(model) == 20
    assert sum(type(m) is AmxConv2d for m in model.modules()) == 20


def test_no_amx_no_switch(monkeypatch):
    monkeypatch.setattr(amx_conv, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(amx_conv, "_unavailable", None)
    monkeypatch.setattr(amx_conv.AMX_CONV, "module", None)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1))
    assert eligible(model[0]) and use_amx_convs(model) == 0 and type(model[0]) is nn.Conv2d
    assert amx_conv.load_error() == "this CPU has no AMX-BF16"


@needs_amx
@pytest.mark.parametrize("conv_impl, grad_impl, precision, compile, switched, pixel_pairs", [
    ("torch", "auto", "bf16", False, 20, 0), ("torch", "torch", "bf16", False, 0, 0), ("torch", "auto", "fp32", False, 0, 0),
    ("torch", "auto", "bf16", True, 0, 0),
    # at the fixture's 12 px every map but the stem's is small enough for matmuls: 19 convolutions, all
    # running as pixel-pair products
    ("auto", "auto", "bf16", False, 1, 19), ("auto", "torch", "bf16", False, 0, 0),
])
def test_engine_switches_convolutions_for_bf16_on_the_cpu(tiny_data, conv_impl, grad_impl, precision, compile, switched,
                                                          pixel_pairs):
    from cnnbench.data import load_dataset
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.run import build_engine, build_model, model_kwargs
    from cnnbench.train.weight_copies import CopyAmxConv2d

    from train_fixtures import tiny_recipe

    ds = load_dataset("tiny-imagenet", data=str(tiny_data))
    cpu = torch.device("cpu")
    recipe = load_recipe(values=tiny_recipe(tiny_data, model={"name": "resnet18"},
                                            train={"conv_impl": conv_impl, "conv_grad_impl": grad_impl, "compile": compile}))
    engine = build_engine(recipe, ds, build_model(recipe, model_kwargs(recipe, ds)), cpu, Precision(precision, cpu), Ranks())
    assert engine.fast_paths.get("amx_weight_grads", 0) == switched
    assert engine.fast_paths.get("amx_pixel_pair_convs", 0) == pixel_pairs
    assert sum(getattr(m, "pixel_pairs", False) for m in engine.model.modules()) == pixel_pairs
    # bf16 SGD: the switched layers run on the optimiser's weight copies too
    copies = CopyAmxConv2d if precision == "bf16" and not compile else AmxConv2d
    assert sum(type(m) is copies for m in engine.model.modules()) == switched
    assert "amx_weight_grads_unavailable" not in engine.fast_paths


@needs_amx
@pytest.mark.parametrize("conv_impl, expected", [("torch", '"amx_weight_grads": 20'), ("auto", '"amx_pixel_pair_convs": 19')])
def test_a_resumed_bf16_run_with_amx_gradients_equals_an_uninterrupted_one(tiny_data, tmp_path, conv_impl, expected):
    # ResNet-18 with torch's convolutions, so that its 20 eligible layers take the AMX gradient, or
    # with the matmul convolutions, whose 19 layers at 12 px run as pixel-pair products: the kernels
    # sum in a fixed order, so a run stopped mid-epoch and resumed ends with the uninterrupted run's bits.
    import os
    import signal

    from cnnbench.train.checkpoint import load_checkpoint
    from cnnbench.train.config import load_recipe
    from cnnbench.train.run import train_run

    from train_fixtures import tiny_recipe

    recipe = load_recipe(values=tiny_recipe(tiny_data, model={"name": "resnet18"}, train={
        "epochs": 2, "precision": "bf16", "conv_impl": conv_impl}))

    def stop_at_step_3(engine, progress):
        if progress.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    whole = train_run(recipe, tmp_path / "whole", quiet=True)
    assert train_run(recipe, tmp_path / "cut", quiet=True, after_step=stop_at_step_3).status == "stopped"
    resumed = train_run(None, tmp_path / "cut", resume=True, quiet=True)
    assert whole.status == resumed.status == "finished"
    env = (tmp_path / "whole" / "env.json").read_text()
    assert expected in env
    ckpts = [load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("whole", "cut")]
    for key in ckpts[0]["model"]:
        assert torch.equal(ckpts[0]["model"][key], ckpts[1]["model"][key]), key
