"""im2col + matmul convolutions: the same numbers as torch's conv, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models import create_model
from cnnbench.train import amx_conv, gemm_conv
from cnnbench.train.gemm_conv import (AUTO_MAX_AREA, GemmConv2d, PatchMatmul, gemm_conv2d, output_areas,
                                      pixel_pair_count, use_gemm_convs, use_pixel_pair_convs)

needs_amx = pytest.mark.skipif(not amx_conv.cpu_has_amx(), reason="this CPU has no AMX-BF16")


@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding, bias", [
    (8, 16, (6, 6), 3, 1, 1, False),
    (8, 16, (7, 5), 3, 2, 1, True),   # odd, rectangular map
    (4, 6, (8, 8), 1, 2, 0, False),   # ResNet shortcut
    (3, 5, (9, 9), 5, 2, 2, True),
    (6, 4, (4, 4), 3, 1, 0, False),   # no padding
    (8, 6, (2, 2), 3, 1, 1, True),    # 2x2 map, every window covers it: the one-matmul CoveringConv
    (8, 6, (1, 1), 3, 1, 1, False),   # 1x1 map: only the centre tap touches a pixel
    (5, 4, (3, 2), 5, 1, 2, False),   # rectangular, 5x5 kernel covering a 3x2 map
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gemm_conv_matches_torch_forward_and_backward(cin, cout, size, kernel, stride, padding, bias, channels_last):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
    x = torch.randn(3, cin, *size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = F.conv2d(x1, conv.weight, conv.bias, stride, padding)
    ours = gemm_conv2d(x2, conv.weight, conv.bias, (stride, stride), (padding, padding))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(expected.shape, generator=g)
    grads_expected = torch.autograd.grad(expected, [x1, conv.weight] + ([conv.bias] if bias else []), upstream)
    grads_ours = torch.autograd.grad(ours, [x2, conv.weight] + ([conv.bias] if bias else []), upstream)
    for a, b in zip(grads_ours, grads_expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size, kernel, padding, covering", [
    ((2, 2), 3, 1, True), ((1, 1), 3, 1, True), ((3, 3), 5, 2, True), ((1, 1), 1, 0, True),
    ((3, 3), 3, 1, False),  # the corner windows miss the far corner: im2col
    ((4, 4), 3, 1, False), ((3, 3), 3, 0, False),  # no padding: the output is smaller than the map
])
def test_covering_conv_is_chosen_exactly_when_every_window_covers_the_map(size, kernel, padding, covering, monkeypatch):
    from cnnbench.train import gemm_conv

    calls = []
    original = gemm_conv.CoveringConv.apply
    monkeypatch.setattr(gemm_conv.CoveringConv, "apply", lambda *a: calls.append(a) or original(*a))
    x = torch.randn(2, 3, *size)
    weight = torch.randn(4, 3, kernel, kernel)
    out = gemm_conv2d(x, weight, None, (1, 1), (padding, padding), native=False)  # (with the C++ im2col: im2col)
    torch.testing.assert_close(out, F.conv2d(x, weight, None, 1, padding), atol=1e-5, rtol=1e-5)
    assert bool(calls) is covering


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_covering_conv_weight_gradient_has_the_weights_layout(fmt):
    # so that accumulating it into .grad is a plain add, not a strided copy
    x = torch.randn(4, 16, 2, 2).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(8, 16, 3, 3).contiguous(memory_format=fmt).requires_grad_()
    gemm_conv2d(x, weight, None, (1, 1), (1, 1), native=False).sum().backward()
    assert weight.grad.is_contiguous(memory_format=fmt) and weight.grad.stride() == weight.stride()


def count_amx_calls(monkeypatch) -> list:
    """Swap in a proxy of the AMX kernels that records (kernel name, the arguments after the first
    two) of each call and runs the real kernel; returns the record."""
    assert amx_conv.load() is None, amx_conv.load_error()
    calls, module = [], amx_conv.AMX_CONV.module

    class Counting:
        def __getattr__(self, name):
            fn = getattr(module, name)
            return lambda *args: calls.append((name, *args[2:])) or fn(*args)

    monkeypatch.setattr(amx_conv.AMX_CONV, "module", Counting())
    return calls


def within_one_rounding(got: torch.Tensor, exact: torch.Tensor) -> bool:
    """Each value an fp32 sum rounded once to bf16: within one bf16 step (2^-8 relative) of float64's,
    plus the fp32 accumulation's error, small against the largest value."""
    scale = exact.abs().max().item()
    return bool(((got.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-4 * scale).all())


@needs_amx
@pytest.mark.parametrize("cin, cout, size, kernel, stride, padding, weight_format", [
    (64, 32, (4, 4), 3, 1, 1, torch.channels_last),      # ResNet-18's layer3 at 64 px, narrower: 100 of 144 taps x pixels
    (32, 64, (8, 7), 3, 2, 1, torch.channels_last),      # strided, odd width
    (32, 32, (4, 4), 1, 2, 0, torch.channels_last),      # a 1x1 shortcut: 3 of 4 input pixels get no gradient
    (32, 32, (5, 5), 3, 1, 0, torch.contiguous_format),  # no padding; an NCHW weight
    (64, 32, (2, 2), 3, 1, 1, torch.channels_last),      # layer4 at 64 px: every window covers the map
    (32, 64, (1, 1), 3, 1, 1, torch.channels_last),      # its layer4 at 32 px: the centre tap only
    (32, 32, (3, 2), 5, 2, 2, torch.channels_last),      # a 5x5 kernel, strided, on a rectangular map
])
def test_pixel_pair_convs_match_float64_to_one_rounding(cin, cout, size, kernel, stride, padding, weight_format,
                                                        monkeypatch):
    calls = count_amx_calls(monkeypatch)
    g = torch.Generator().manual_seed(cin + kernel + stride)
    x = torch.randn(37, cin, *size, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(cout, cin, kernel, kernel, generator=g) * 0.1).to(torch.bfloat16).contiguous(
        memory_format=weight_format)
    results = {}
    for pairs in (False, True):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = gemm_conv2d(xi, wi, None, (stride, stride), (padding, padding), pixel_pairs=pairs)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
        out.backward(upstream)
        results[pairs] = (out, xi.grad, wi.grad)
    assert [c[0] for c in calls] == ["small_map_forward", "small_map_input_grad", "small_map_weight_grad"]
    (out0, dx0, dw0), (out1, dx1, dw1) = results[False], results[True]
    assert out1.is_contiguous(memory_format=torch.channels_last) and dx1.is_contiguous(memory_format=torch.channels_last)
    assert dw1.dtype == torch.bfloat16 and dw1.is_contiguous(memory_format=weight_format)  # the weight's own layout
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    exact = F.conv2d(x64, w64, None, stride, padding)
    exact_dx, exact_dw = torch.autograd.grad(exact, [x64, w64], upstream.double())
    for got, want, plain in ((out1, exact, out0), (dx1, exact_dx, dx0), (dw1, exact_dw, dw0)):
        assert within_one_rounding(got, want)
        # im2col + matmul: the same values up to its own roundings (col2im sums taps rounded to bf16)
        torch.testing.assert_close(got.float(), plain.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item())


@needs_amx
def test_pixel_pairs_apply_to_bf16_with_channels_in_multiples_of_32(monkeypatch):
    assert amx_conv.load() is None, amx_conv.load_error()
    x = torch.randn(4, 32, 4, 4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(32, 32, 3, 3).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert gemm_conv._pixel_pairs_apply(x, weight, (1, 1), (1, 1))
    assert not gemm_conv._pixel_pairs_apply(x.float(), weight.float(), (1, 1), (1, 1))  # fp32
    assert not gemm_conv._pixel_pairs_apply(x[:, :16], weight[:, :16], (1, 1), (1, 1))  # 16 channels
    assert not gemm_conv._pixel_pairs_apply(x, weight, (1, 2), (1, 1))  # unequal strides
    # fp32 with the flag set takes the plain path
    calls = count_amx_calls(monkeypatch)
    assert torch.equal(gemm_conv2d(x.float(), weight.float(), None, (1, 1), (1, 1), pixel_pairs=True),
                       gemm_conv2d(x.float(), weight.float(), None, (1, 1), (1, 1)))
    assert calls == []


def test_pixel_pair_count_counts_the_taps_inside_the_map():
    for h, w, k, s, p in [(4, 4, 3, 1, 1), (2, 2, 3, 1, 1), (8, 7, 3, 2, 1), (4, 4, 1, 2, 0), (5, 5, 3, 1, 0)]:
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        expected = sum(0 <= oy * s - p + i < h and 0 <= ox * s - p + j < w
                       for oy in range(ho) for ox in range(wo) for i in range(k) for j in range(k))
        assert pixel_pair_count(h, w, k, s, p) == expected
    assert pixel_pair_count(4, 4, 3, 1, 1) == 100 and pixel_pair_count(2, 2, 3, 1, 1) == 16


@needs_amx
def test_resnet18_at_64px_runs_layer3_and_layer4_as_pixel_pair_convs():
    model = create_model("resnet18", num_classes=10, input_size=64).to(memory_format=torch.channels_last)
    use_gemm_convs(model, torch.zeros(1, 3, 64, 64), AUTO_MAX_AREA[torch.bfloat16])
    assert use_pixel_pair_convs(model) == 10  # every matmul convolution
    assert all(m.pixel_pairs for m in model.modules() if isinstance(m, GemmConv2d))


def test_no_amx_no_pixel_pair_convs(monkeypatch):
    monkeypatch.setattr(amx_conv, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(amx_conv, "_unavailable", None)
    monkeypatch.setattr(amx_conv.AMX_CONV, "module", None)
    model = create_model("resnet18", num_classes=10, input_size=64)
    use_gemm_convs(model, torch.zeros(1, 3, 64, 64), AUTO_MAX_AREA[torch.bfloat16])
    assert use_pixel_pair_convs(model) == 0
    assert not any(getattr(m, "pixel_pairs", False) for m in model.modules())


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("dtype, out_channels, tol", [
    (torch.float32, 40, 1e-5),
    (torch.bfloat16, 40, 2e-2),
    (torch.bfloat16, 600, 2e-2),  # bf16 above OUT_SLICE: the forward runs in slices of 256 + 88 columns
])
def test_patch_matmul_is_the_product_and_its_gradients(dtype, out_channels, tol, native, monkeypatch):
    g = torch.Generator().manual_seed(out_channels)
    patches = torch.randn(96, 72, generator=g).to(dtype)
    matrix = torch.randn(out_channels, 72, generator=g).to(dtype)
    upstream = torch.randn(96, out_channels, generator=g).to(dtype)
    slices, transposes = [], []
    mm = torch.mm
    monkeypatch.setattr(gemm_conv.torch, "mm", lambda *a, **k: slices.append(a[1].shape) or mm(*a, **k))
    ops = gemm_conv.NHWC_OPS.load()
    if ops is not None:  # count the C++ transposes of the gradient
        monkeypatch.setattr(gemm_conv.NHWC_OPS, "module", type("Spy", (), {
            "transpose2d": staticmethod(lambda t: transposes.append(t.shape) or ops.transpose2d(t))})())
    p1, m1 = patches.clone().requires_grad_(), matrix.clone().requires_grad_()
    ours = PatchMatmul.apply(p1, m1, native)
    assert len(slices) == (3 if dtype == torch.bfloat16 and out_channels > PatchMatmul.OUT_SLICE else 0)
    p2, m2 = patches.double().requires_grad_(), matrix.double().requires_grad_()
    expected = p2 @ m2.t()
    torch.testing.assert_close(ours.double(), expected, atol=tol * 10, rtol=tol)
    grads = torch.autograd.grad(ours, [p1, m1], upstream)
    expected_grads = torch.autograd.grad(expected, [p2, m2], upstream.double())
    for a, b in zip(grads, expected_grads):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.double(), b, atol=tol * 10, rtol=tol)
    assert transposes == ([(96, out_channels)] if native and ops is not None else [])


def test_gemm_conv_weight_gradient_keeps_the_channels_last_layout():
    weight = torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    gemm_conv2d(x, weight, None, (1, 1), (1, 1), covering=False).sum().backward()
    assert weight.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(weight.grad, torch.autograd.grad(F.conv2d(x, weight, None, 1, 1).sum(), weight)[0],
                               atol=1e-4, rtol=1e-4)


def test_gemm_conv_under_bf16_autocast_computes_in_bf16():
    conv = nn.Conv2d(16, 32, 3, 1, 1)
    x = torch.randn(4, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = gemm_conv2d(x, conv.weight, conv.bias, (1, 1), (1, 1))
        reference = conv(x)
    assert ours.dtype == torch.bfloat16 and ours.is_contiguous(memory_format=torch.channels_last)
    rel = (ours.float() - reference.float()).norm() / reference.float().norm()
    assert rel < 1e-2  # bf16 rounding, not a different result


def test_resnet18_at_64px_switches_the_small_maps_and_keeps_its_outputs_and_weights():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, input_size=64)
    reference = create_model("resnet18", num_classes=10, input_size=64)
    reference.load_state_dict(model.state_dict())
    example = torch.zeros(1, 3, 64, 64)
    areas = output_areas(model, example)
    assert sorted(set(areas.values())) == [4, 16, 64, 256, 1024]  # 64 px: stem 32x32, layer1 16x16 ... layer4 2x2
    assert use_gemm_convs(model, example, AUTO_MAX_AREA[torch.bfloat16]) == 10  # layer3 and layer4 convs
    switched = [name for name, m in model.named_modules() if type(m) is GemmConv2d]
    assert all(name.startswith(("layer3", "layer4")) for name in switched), switched
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)
    fp32 = create_model("resnet18", num_classes=10, input_size=64)
    assert use_gemm_convs(fp32, example, AUTO_MAX_AREA[None]) == 5  # layer4 only at 2x2


def test_engine_uses_gemm_convs_on_cpu_unless_told_not_to(tiny_data):
    from cnnbench.data import load_dataset
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.run import build_engine, build_model, model_kwargs

    from train_fixtures import tiny_recipe

    ds = load_dataset("tiny-imagenet", data=str(tiny_data))
    cpu = torch.device("cpu")
    counts = {}
    for impl in ("auto", "torch"):
        values = tiny_recipe(tiny_data, model={"name": "resnet18"}, train={"conv_impl": impl})
        values["data"]["input_size"] = 32
        recipe = load_recipe(values=values)
        engine = build_engine(recipe, ds, build_model(recipe, model_kwargs(recipe, ds)), cpu, Precision("fp32", cpu), Ranks())
        counts[impl] = sum(type(m) is GemmConv2d for m in engine.model.modules())
    # 32 px, fp32 (outputs of at most 2x2): layer3 (2x2) and layer4 (1x1), 5 convs each
    assert counts == {"auto": 10, "torch": 0}
