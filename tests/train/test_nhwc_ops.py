"""The C++ channels_last kernels (nhwc_ops.cpp): im2col and its adjoint give the Python path's
numbers, max pooling gives torch's (ties, NaN, padding included), the engine switches max pools on
the CPU, and everything falls back to torch where the kernels do not apply or cannot be built."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models import create_model
from cnnbench.train import gemm_conv, max_pool
from cnnbench.train.gemm_conv import Im2col, gemm_conv2d
from cnnbench.train.max_pool import NhwcMaxPool2d, use_nhwc_max_pool
from cnnbench.train.native import NHWC_OPS, Kernels

pytestmark = pytest.mark.skipif(NHWC_OPS.load() is None, reason=f"no C++ toolchain: {NHWC_OPS.error}")

SHAPES = [  # (batch, channels, height, width, kernel, stride, padding)
    (2, 5, 7, 9, 3, 2, 1), (3, 4, 4, 4, 3, 1, 1), (2, 3, 8, 8, 1, 2, 0), (2, 6, 5, 5, 3, 2, 0),
    (2, 8, 2, 2, 3, 1, 1), (1, 3, 6, 4, 5, 1, 2),
]


def nhwc(n, c, h, w, dtype, seed=0):
    return (torch.randn(n, h, w, c, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, c, h, w, k, s, p", SHAPES)
def test_im2col_and_its_gradient_match_the_python_path(n, c, h, w, k, s, p, dtype):
    x = nhwc(n, c, h, w, dtype)
    geometry = ((k, k), (s, s), (p, p))
    x_native, x_python = x.clone().requires_grad_(), x.float().requires_grad_()
    native = Im2col.apply(x_native, *geometry)
    python = Im2col.apply(x_python, *geometry, False)
    assert torch.equal(native.float(), python)  # a copy: the same bits
    upstream = torch.randn(python.shape, generator=torch.Generator().manual_seed(1))
    native.backward(upstream.to(dtype))
    python.backward(upstream.to(dtype).float())
    # fp32 accumulation in both (the native kernel's sum of up to k*k taps, rounded once to dtype)
    torch.testing.assert_close(x_native.grad.float(), x_python.grad.to(dtype).float(), atol=0, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_im2col_runs_the_native_kernel_only_where_it_applies(monkeypatch):
    calls = []
    original = NHWC_OPS.module.im2col
    monkeypatch.setattr(NHWC_OPS, "module", type("Spy", (), {
        "im2col": staticmethod(lambda *a: calls.append(a) or original(*a)), "col2im": NHWC_OPS.module.col2im})())
    weight = torch.randn(4, 3, 3, 3)
    cl = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    gemm_conv2d(cl, weight, None, (1, 1), (1, 1))
    assert len(calls) == 1  # channels_last float32: the C++ kernel
    gemm_conv2d(cl.contiguous(), weight, None, (1, 1), (1, 1))  # NCHW: the permuted view is not contiguous
    gemm_conv2d(cl.double(), weight.double(), None, (1, 1), (1, 1))  # float64: not a dtype it takes
    gemm_conv2d(cl, weight, None, (1, 1), (1, 1), native=False)
    assert len(calls) == 1


def test_a_channels_last_2x2_map_runs_im2col_not_the_covering_matmul(monkeypatch):
    calls = []
    original = gemm_conv.CoveringConv.apply
    monkeypatch.setattr(gemm_conv.CoveringConv, "apply", lambda *a: calls.append(a) or original(*a))
    x = torch.randn(2, 8, 2, 2).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 8, 3, 3)
    out = gemm_conv2d(x, weight, None, (1, 1), (1, 1))
    assert not calls
    torch.testing.assert_close(out, F.conv2d(x, weight, None, 1, 1), atol=1e-5, rtol=1e-5)
    gemm_conv2d(x, weight, None, (1, 1), (1, 1), native=False)  # the Python path keeps CoveringConv
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, cols", [(1, 1), (5, 37), (64, 33), (70, 130), (2048, 256)])
def test_transpose2d_is_torchs_transpose(rows, cols, dtype):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols)).to(dtype)
    out = NHWC_OPS.module.transpose2d(x)
    assert out.is_contiguous() and out.dtype == dtype
    assert torch.equal(out, x.t())


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, 4), "contiguous 2-d"), (torch.zeros(4, 6).t(), "contiguous 2-d"),
    (torch.zeros(3, 3, dtype=torch.float64), "float32 or bfloat16"),
])
def test_transpose2d_rejects_what_it_cannot_take(bad, message):
    with pytest.raises(RuntimeError, match=message):
        NHWC_OPS.module.transpose2d(bad)


def cl(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, c, h, w, k, s, p", [shape for shape in SHAPES if 2 * shape[6] <= shape[4]])
def test_max_pool_matches_torch_forward_and_backward(n, c, h, w, k, s, p, dtype):
    x = cl(nhwc(n, c, h, w, dtype).permute(0, 3, 1, 2))
    x[0, 0, 0, 0] = float("nan")  # a NaN wins its windows, as in torch
    pool = nn.MaxPool2d(k, s, p)
    ours_pool = nn.MaxPool2d(k, s, p)
    ours_pool.__class__ = NhwcMaxPool2d
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, ours = pool(x1), ours_pool(x2)
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.dtype == dtype
    assert ours._base is None  # a fresh tensor: an in-place op after a view would replay the view in autograd
    torch.testing.assert_close(ours, expected, atol=0, rtol=0, equal_nan=True)
    upstream = cl(torch.randn(expected.shape, generator=torch.Generator().manual_seed(2)).to(dtype))
    expected.backward(upstream)
    ours.backward(upstream)
    # each input sums the gradients of the windows it won: the same terms, ours added in fp32
    torch.testing.assert_close(x2.grad.float(), x1.grad.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6, rtol=1e-2)


def test_max_pool_ties_go_to_the_first_maximum_as_in_torch():
    x = cl(torch.zeros(2, 3, 6, 6))  # every window is a tie (the ReLU'd zeros of a real network)
    x[:, :, 2, 3] = 1.0
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours_pool = nn.MaxPool2d(3, 2, 1)
    ours_pool.__class__ = NhwcMaxPool2d
    expected, ours = F.max_pool2d(x1, 3, 2, 1), ours_pool(x2)
    upstream = cl(torch.arange(expected.numel(), dtype=torch.float32).view(expected.shape))
    expected.backward(upstream)
    ours.backward(upstream)
    assert torch.equal(ours, expected) and torch.equal(x2.grad, x1.grad)


def test_max_pool_leaves_other_inputs_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(max_pool._MaxPool, "apply", lambda *a: calls.append(a))
    pool = nn.MaxPool2d(3, 2, 1)
    pool.__class__ = NhwcMaxPool2d
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(pool(x), F.max_pool2d(x, 3, 2, 1))  # NCHW
    torch.testing.assert_close(pool(cl(x).double()), F.max_pool2d(x.double(), 3, 2, 1))  # float64
    assert not calls


def test_resnet18_switches_its_stem_pool_and_keeps_outputs_and_state_dict():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, input_size=64).to(memory_format=torch.channels_last)
    reference = create_model("resnet18", num_classes=10, input_size=64).to(memory_format=torch.channels_last)
    reference.load_state_dict(model.state_dict())
    assert use_nhwc_max_pool(model) == 1 and type(model.maxpool) is NhwcMaxPool2d
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = cl(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    assert use_nhwc_max_pool(create_model("mlp1", num_classes=10, input_size=64)) == 0


def test_pools_torch_cannot_match_are_left_alone():
    model = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3, dilation=2), nn.MaxPool2d(2, return_indices=True),
                          nn.MaxPool2d(3, 1, 1))
    assert use_nhwc_max_pool(model) == 1 and [type(m) for m in model] == [nn.MaxPool2d] * 3 + [NhwcMaxPool2d]


@pytest.mark.parametrize("impl, pools", [("auto", 1), ("torch", 0)])
def test_engine_switches_max_pools_on_the_cpu(tiny_data, impl, pools):
    from cnnbench.data import load_dataset
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.run import build_engine, build_model, model_kwargs

    from train_fixtures import tiny_recipe

    ds = load_dataset("tiny-imagenet", data=str(tiny_data))
    cpu = torch.device("cpu")
    recipe = load_recipe(values=tiny_recipe(tiny_data, model={"name": "resnet18"}, train={"pool_impl": impl}))
    engine = build_engine(recipe, ds, build_model(recipe, model_kwargs(recipe, ds)), cpu, Precision("bf16", cpu), Ranks())
    assert sum(isinstance(m, NhwcMaxPool2d) for m in engine.model.modules()) == pools
    assert engine.fast_paths.get("nhwc_max_pools", 0) == pools


def test_a_failed_build_keeps_torchs_operators_and_says_why(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "nhwc_ops.cpp"
    broken.write_text("this is not C++;\n")  # fails at once
    kernels = Kernels(broken, "test kernels")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    assert kernels.load() is None and kernels.error
    assert "compiling the test kernels" in capsys.readouterr().err
    assert kernels.load() is None  # not tried again
    monkeypatch.setattr(max_pool, "NHWC_OPS", kernels)
    model = create_model("resnet18", num_classes=10, input_size=64)
    assert use_nhwc_max_pool(model) == 0 and type(model.maxpool) is nn.MaxPool2d


def test_a_recipe_names_the_pool_implementations_it_takes():
    from cnnbench.errors import CnnbenchError
    from cnnbench.train.config import TrainConfig

    assert TrainConfig(pool_impl="torch").pool_impl == "torch"
    with pytest.raises(CnnbenchError, match=r"train.pool_impl: expected one of auto, torch, got 'fast'"):
        TrainConfig(pool_impl="fast")
