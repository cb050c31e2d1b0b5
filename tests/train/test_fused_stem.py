"""The ResNet stem's batch norm + ReLU + max pool in one C++ call each way (fused_bn.cpp's
bn_relu_pool_*): the pooled output is bn_forward + max_pool_forward's bit for bit, the taps too but
for windows whose pixels round to the same output, the gradients are theirs given the same taps, and
a ResNet's stem takes its pool over without a change of state_dict or of its outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models import create_model
from cnnbench.train import fused_bn
from cnnbench.train.fused_bn import fused_pools, use_fused_batchnorm
from cnnbench.train.max_pool import NhwcMaxPool2d, use_nhwc_max_pool
from cnnbench.train.native import NHWC_OPS

pytestmark = pytest.mark.skipif(fused_bn.load_extension() is None or NHWC_OPS.load() is None,
                                reason=f"no C++ toolchain: {fused_bn.load_error() or NHWC_OPS.error}")

GEOMETRIES = [  # (batch, channels, height, width, kernel, stride, padding)
    (4, 8, 16, 16, 3, 2, 1),  # a ResNet stem's pool
    (3, 5, 9, 7, 3, 2, 1),    # odd, rectangular
    (2, 6, 8, 8, 2, 2, 0),
    (2, 4, 6, 6, 3, 1, 1),    # overlapping windows, every pixel in up to 9
    (2, 64, 16, 16, 3, 2, 1),  # channels in multiples of 32: the AVX-512 paths where the CPU has them
    (3, 32, 9, 7, 3, 2, 1),
]


def stem_input(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * 2 + 0.5
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def affine(c, seed=1):
    """Positive, negative and zero scales (a channel whose weight is 0 outputs a constant)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.rand(c, generator=g) + 0.5
    weight[1], weight[2] = -weight[1], 0.0
    return weight, torch.randn(c, generator=g) * 0.3


def two_kernels(x, weight, bias, k, s, p):
    """bn_forward + max_pool_forward, the path the fused kernel replaces."""
    y, mean, invstd, _ = fused_bn.FUSED_BN.module.bn_forward(x, weight, bias, None, 1e-5, True)
    pooled, taps = NHWC_OPS.module.max_pool_forward(y.permute(0, 2, 3, 1), [k, k], [s, s], [p, p])
    return y, pooled, taps, mean, invstd


def bits(t):
    return t.contiguous().view(torch.int16)


@pytest.mark.parametrize("n, c, h, w, k, s, p", GEOMETRIES)
def test_pooled_output_is_the_two_kernels_bit_for_bit_and_taps_differ_only_at_rounding_ties(n, c, h, w, k, s, p):
    x = stem_input(n, c, h, w)
    x[0, 3, 1, 1] = float("nan")  # a NaN wins its windows (its channel's statistics turn NaN, in both)
    weight, bias = affine(c)
    y_full, pooled, taps, mean, invstd = two_kernels(x, weight, bias, k, s, p)
    y, our_taps, winners, our_mean, our_invstd, _ = fused_bn.FUSED_BN.module.bn_relu_pool_forward(
        x, weight, bias, 1e-5, [k, k], [s, s], [p, p])
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == pooled.shape
    assert torch.equal(bits(y), bits(pooled))
    assert torch.equal(bits(our_mean), bits(mean)) and torch.equal(bits(our_invstd), bits(invstd))
    # where the taps differ, both pixels normalise to the window's output: a tie only the rounding made
    ho, wo = y.shape[2:]
    full = F.pad(y_full.float(), (p, p, p, p), value=float("-inf"))
    patches = full.unfold(2, k, s).unfold(3, k, s).reshape(n, c, ho, wo, k * k)  # (n, c, ho, wo, taps)
    ours, theirs = our_taps.permute(0, 3, 1, 2).long(), taps.permute(0, 3, 1, 2).long()
    differ = ours != theirs
    passed = y.float() > 0  # windows the ReLU zeroed are all ties (every pixel outputs 0): no gradient goes through
    assert differ[passed].float().mean() < 0.05
    at_ours = patches.gather(4, ours.unsqueeze(4)).squeeze(4)
    at_theirs = patches.gather(4, theirs.unsqueeze(4)).squeeze(4)
    torch.testing.assert_close(at_ours[differ], at_theirs[differ], atol=0, rtol=0, equal_nan=True)  # NaN channel: all NaN
    # the winners are the input values at the taps
    xs = F.pad(x.float(), (p, p, p, p)).unfold(2, k, s).unfold(3, k, s).reshape(n, c, ho, wo, k * k)
    win = xs.gather(4, ours.unsqueeze(4)).squeeze(4)
    assert torch.equal(bits(winners.float().nan_to_num(7.0)), bits(win.nan_to_num(7.0)))


@pytest.mark.parametrize("n, c, h, w, k, s, p", GEOMETRIES)
def test_gradients_are_the_two_kernels_given_the_same_taps(n, c, h, w, k, s, p):
    x = stem_input(n, c, h, w, seed=2)
    weight, bias = affine(c, seed=3)
    module = fused_bn.FUSED_BN.module
    y, taps, winners, mean, invstd, _ = module.bn_relu_pool_forward(x, weight, bias, 1e-5, [k, k], [s, s], [p, p])
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    dx, dw, db = module.bn_relu_pool_backward(grad, taps, y, winners, x, mean, invstd, weight, [k, k], [s, s], [p, p])
    # the two kernels' backward through the same taps: the pool's gradient map, then bn_backward
    y_full, _, _, _, _ = two_kernels(x, weight, bias, k, s, p)
    dz = NHWC_OPS.module.max_pool_backward(grad.permute(0, 2, 3, 1), taps, h, w, [k, k], [s, s], [p, p])
    ref_dx, ref_dw, ref_db, _ = module.bn_backward(dz.permute(0, 3, 1, 2), x, y_full, mean, invstd, weight, True, False)
    assert dx.is_contiguous(memory_format=torch.channels_last) and dx.shape == x.shape
    # the same sums in another order, and the pool's map rounded to bf16 on the reference's side
    torch.testing.assert_close(dx.float(), ref_dx.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(dw, ref_dw, atol=5e-2, rtol=1e-2)
    torch.testing.assert_close(db, ref_db, atol=5e-2, rtol=1e-2)
    # against float64 through the same taps, this kernel (which never rounds the pool's map) is closer
    dz64 = NHWC_OPS.module.max_pool_backward((grad.float() * (y.float() > 0)).permute(0, 2, 3, 1).contiguous(), taps,
                                             h, w, [k, k], [s, s], [p, p]).permute(0, 3, 1, 2).double()
    xhat = (x.double() - mean.double().view(1, -1, 1, 1)) * invstd.double().view(1, -1, 1, 1)
    db64, dw64 = dz64.sum((0, 2, 3)), (dz64 * xhat).sum((0, 2, 3))
    rows = n * h * w
    dx64 = (weight.double() * invstd.double()).view(1, -1, 1, 1) * (
        dz64 - (db64 / rows).view(1, -1, 1, 1) - xhat * (dw64 / rows).view(1, -1, 1, 1))
    torch.testing.assert_close(dw.double(), dw64, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(db.double(), db64, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dx.double(), dx64, atol=1e-2, rtol=1e-2)  # dx itself is rounded to bf16
    assert (dw.double() - dw64).abs().sum() <= (ref_dw.double() - dw64).abs().sum()


@pytest.mark.parametrize("k, s, p", [(3, 2, 1), (3, 1, 1), (2, 2, 0)])
def test_vector_paths_are_the_scalar_paths_bit_for_bit(k, s, p):
    """With channels in multiples of 32 both kernels run 32 channels per AVX-512 vector (16-bit integer keys
    for the pool; the backward's sums in registers); every channel is computed alone, so the first 32
    channels of a 33-channel input (the scalar loops) must come out the same bits: ties of -0 and +0,
    infinities, a NaN, negative and zero scales included."""
    x33 = stem_input(3, 33, 12, 10, seed=5)
    x33[0, 0, :2, :2] = 0.0
    x33[0, 0, 0, 1] = -0.0  # -0 ties +0: the first pixel of the window wins
    x33[1, 4, 3, 3], x33[1, 5, 4, 4], x33[2, 6, 5, 5] = float("inf"), float("-inf"), float("nan")
    x33[0, 2, 5, 5] = float("inf")  # a zero-scale channel: 0 * inf is NaN, which wins
    weight, bias = affine(33, seed=6)
    x32 = x33[:, :32].contiguous(memory_format=torch.channels_last)
    module = fused_bn.FUSED_BN.module
    outs = []
    for x, w, b in ((x33, weight, bias), (x32, weight[:32], bias[:32])):
        fwd = module.bn_relu_pool_forward(x, w, b, 1e-5, [k, k], [s, s], [p, p])
        y, taps, winners, mean, invstd, var = fwd
        grad = torch.randn(3, 33, *y.shape[2:], generator=torch.Generator().manual_seed(7))[:, :x.shape[1]]
        grad = grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        bwd = module.bn_relu_pool_backward(grad, taps, y, winners, x, mean, invstd, w, [k, k], [s, s], [p, p])
        outs.append([t[:, :32] if t.dim() == 4 and t.shape[1] in (32, 33) else t[..., :32] for t in (*fwd, *bwd)])
    names = ["y", "taps", "winners", "mean", "invstd", "var", "grad_x", "grad_weight", "grad_bias"]
    as_int = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.uint8: torch.uint8}
    for name, scalar, vector in zip(names, *outs):  # bits: NaN where NaN
        assert torch.equal(scalar.contiguous().view(as_int[scalar.dtype]), vector.contiguous().view(as_int[vector.dtype])), name


def test_same_bits_with_one_and_two_threads():
    x = stem_input(8, 16, 16, 16)
    weight, bias = affine(16)
    module = fused_bn.FUSED_BN.module
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            y, taps, winners, mean, invstd, var = module.bn_relu_pool_forward(x, weight, bias, 1e-5, [3, 3], [2, 2], [1, 1])
            grads = module.bn_relu_pool_backward(torch.ones_like(y), taps, y, winners, x, mean, invstd, weight,
                                                 [3, 3], [2, 2], [1, 1])
            outs.append((y, taps, mean, var, *grads))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_bad_inputs_say_what_was_expected():
    module = fused_bn.FUSED_BN.module
    x = stem_input(2, 4, 8, 8)
    weight, bias = affine(4)
    with pytest.raises(RuntimeError, match="channels_last"):
        module.bn_relu_pool_forward(x.contiguous(), weight, bias, 1e-5, [3, 3], [2, 2], [1, 1])
    with pytest.raises(RuntimeError, match="padding at most half the kernel"):
        module.bn_relu_pool_forward(x, weight, bias, 1e-5, [3, 3], [2, 2], [2, 2])
    y, taps, winners, mean, invstd, _ = module.bn_relu_pool_forward(x, weight, bias, 1e-5, [3, 3], [2, 2], [1, 1])
    with pytest.raises(RuntimeError, match="grad_y: expected the pooled output's shape"):
        module.bn_relu_pool_backward(x, taps, y, winners, x, mean, invstd, weight, [3, 3], [2, 2], [1, 1])
    with pytest.raises(RuntimeError, match="taps"):
        module.bn_relu_pool_backward(y, taps.float(), y, winners, x, mean, invstd, weight, [3, 3], [2, 2], [1, 1])


def stem_models():
    """ResNet-18 twice with every CPU fast path: the stem's pool taken into its batch norm or not."""
    torch.manual_seed(0)
    fused = create_model("resnet18", num_classes=10, input_size=64).to(memory_format=torch.channels_last)
    apart = copy.deepcopy(fused)
    keys = list(fused.state_dict())
    use_nhwc_max_pool(fused), use_fused_batchnorm(fused)     # the engine's order: the pool can be taken over
    use_fused_batchnorm(apart), use_nhwc_max_pool(apart)     # the pool switched after: it stays a module
    assert list(fused.state_dict()) == keys
    return fused, apart


def test_a_resnet_stem_takes_its_pool_over_and_keeps_its_outputs():
    fused, apart = stem_models()
    assert type(fused.maxpool) is nn.Identity and type(fused.bn1.fused_pool) is NhwcMaxPool2d
    assert fused_pools(fused) == 1 and fused_pools(apart) == 0 and type(apart.maxpool) is NhwcMaxPool2d
    x = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    outputs = []
    for model in (fused, apart):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])  # the stem's pooled map is the same bits, so all after it too
    for (name, a), b in zip(apart.named_parameters(), fused.parameters()):
        # the same but for windows where two pixels round to one output (the gradient goes to another)
        assert F.cosine_similarity(a.grad.float().flatten(), b.grad.float().flatten(), dim=0) > 0.99, name
    for (name, a), b in zip(apart.named_buffers(), fused.buffers()):
        assert torch.equal(a, b), name  # running statistics: the same batch statistics
    fused.eval(), apart.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x), apart(x))  # eval: torch's batch norm, then the pool


def test_torchs_pool_is_left_to_torch():
    model = create_model("resnet18", num_classes=10, input_size=64)
    use_fused_batchnorm(model)  # no use_nhwc_max_pool (train.pool_impl: torch): the pool stays nn.MaxPool2d
    assert type(model.maxpool) is nn.MaxPool2d and fused_pools(model) == 0
