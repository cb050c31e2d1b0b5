"""The fused channels_last bf16 batch norm: torch's numbers forward and backward, the same running
statistics, torch's own path wherever it does not apply, and ResNets switched without a change of
state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from cnnbench.models import create_model
from cnnbench.train import fused_bn
from cnnbench.train.fused_bn import FusedBasicBlock, FusedBatchNorm2d, FusedBottleneck, use_fused_batchnorm
from cnnbench.train.native import Kernels

pytestmark = pytest.mark.skipif(fused_bn.load_extension() is None, reason=f"no C++ toolchain: {fused_bn.load_error()}")


def cl_bf16(*shape, mean=0.0, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * std + mean
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def pair(channels, momentum=0.1):
    """A FusedBatchNorm2d and an nn.BatchNorm2d with the same random affine parameters."""
    g = torch.Generator().manual_seed(1)
    ref = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        ref.bias.copy_(torch.randn(channels, generator=g))
    fused = nn.BatchNorm2d(channels, momentum=momentum)
    fused.load_state_dict(ref.state_dict())
    fused.__class__ = FusedBatchNorm2d
    return fused, ref


@pytest.mark.parametrize("shape", [(4, 8, 5, 3), (16, 64, 16, 16), (3, 20, 1, 1), (2, 5, 7, 9)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_torch_batch_norm_forward_backward_and_running_stats(shape, relu, residual):
    fused, ref = pair(shape[1])
    x = cl_bf16(*shape, mean=2.0, std=3.0)
    r = cl_bf16(*shape, seed=2) if residual else None
    x1, x2 = x.clone().requires_grad_(), x.float().requires_grad_()  # reference in fp32 from the same bf16 values
    r1, r2 = (r.clone().requires_grad_(), r.float().requires_grad_()) if residual else (None, None)
    ours = fused(x1, r1, relu)
    expected = ref(x2) + (r2 if residual else 0)
    expected = F.relu(expected) if relu else expected
    assert ours.dtype == torch.bfloat16 and ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.float(), expected, atol=2e-2, rtol=1e-2)  # bf16 output rounding
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    inputs_ours = [x1, fused.weight, fused.bias] + ([r1] if residual else [])
    inputs_ref = [x2, ref.weight, ref.bias] + ([r2] if residual else [])
    grads_ours = torch.autograd.grad(ours, inputs_ours, upstream.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    grads_ref = torch.autograd.grad(expected, inputs_ref, upstream.to(torch.bfloat16).float())
    for a, b in zip(grads_ours, grads_ref):
        scale = b.abs().max().item() or 1.0
        assert (a.float() - b).abs().max().item() <= 2e-2 * scale
    torch.testing.assert_close(fused.running_mean, ref.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.running_var, ref.running_var, atol=1e-4, rtol=1e-4)
    assert fused.num_batches_tracked.item() == ref.num_batches_tracked.item() == 1


def test_statistics_stay_accurate_when_the_mean_dwarfs_the_spread():
    # E[x^2] - E[x]^2 in fp32 would lose the variance of values around 300 with std 0.5
    fused, ref = pair(16)
    x = cl_bf16(64, 16, 8, 8, mean=300.0, std=0.5)
    with torch.no_grad():
        ours = fused(x)
        expected = ref(x.float())
    torch.testing.assert_close(ours.float(), expected, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(fused.running_var, ref.running_var, rtol=1e-3, atol=1e-5)


def test_same_bits_with_one_and_two_threads():
    fused, _ = pair(32)
    x = cl_bf16(8, 32, 16, 16).requires_grad_()
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = fused(x, relu=True)
            (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
            outs.append((y, gx))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("case", ["eval", "fp32", "nchw", "cumulative"])
def test_other_modes_and_layouts_match_torch(case):  # eval, fp32 and NCHW take torch's path
    fused, ref = pair(6, momentum=None if case == "cumulative" else 0.1)
    x = cl_bf16(4, 6, 5, 5, mean=1.0)
    if case == "fp32":
        x = x.float()
    if case == "nchw":
        x = x.contiguous()
    if case == "eval":
        fused.eval(), ref.eval()
    for _ in range(2):  # cumulative average: the second batch's momentum is 1/2
        ours, expected = fused(x, relu=True), F.relu(ref(x))
    torch.testing.assert_close(ours.float(), expected.float(), atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(fused.running_mean, ref.running_mean, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fused.running_var, ref.running_var, atol=1e-3, rtol=1e-3)


def test_resnets_switch_blocks_and_stem_without_changing_state_dict():
    model = create_model("resnet18", num_classes=10, input_size=64)
    keys = list(model.state_dict())
    assert use_fused_batchnorm(model) == 20
    assert list(model.state_dict()) == keys
    assert all(type(b) is FusedBasicBlock for layer in (model.layer1, model.layer4) for b in layer)
    assert type(model.relu) is nn.Identity and model.bn1.fused_relu  # the stem's ReLU now runs inside bn1
    deep = create_model("resnet50", num_classes=10, input_size=64)
    assert use_fused_batchnorm(deep) == 53 and type(deep.layer1[0]) is FusedBottleneck


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_fused_blocks_match_fp32_blocks(block):
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(32, 16 * block.expansion, 1, stride=2, bias=False), nn.BatchNorm2d(16 * block.expansion))
    truth = block(32, 16, stride=2, downsample=downsample).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(truth)
    use_fused_batchnorm(fused)
    assert type(fused) is {BasicBlock: FusedBasicBlock, Bottleneck: FusedBottleneck}[block]
    x = torch.randn(16, 32, 16, 16).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = fused(x1)
    expected = truth(x2)
    assert ours.dtype == torch.bfloat16
    assert F.cosine_similarity(ours.float().flatten(), expected.flatten(), dim=0) > 0.999
    upstream = torch.randn(expected.shape)
    ours.backward(upstream.to(torch.bfloat16))
    expected.backward(upstream)
    assert F.cosine_similarity(x1.grad.float().flatten(), x2.grad.flatten(), dim=0) > 0.99
    for (n, a), b in zip(truth.named_parameters(), fused.parameters()):
        assert F.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0) > 0.99, n
    for (n, a), b in zip(truth.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b.float(), a.float(), atol=2e-2, rtol=2e-2, msg=n)


def test_fused_resnet18_is_as_close_to_fp32_as_torchs_bf16():
    # bf16 gradients of a small batch sit at cosine ~0.95 from fp32's, whichever batch norm runs;
    # the fused one must be as close to the fp32 truth as torch's own bf16 path
    torch.manual_seed(0)
    models = {k: create_model("resnet18", num_classes=10, input_size=64).to(memory_format=torch.channels_last)
              for k in ("fp32", "plain", "fused")}
    for k in ("plain", "fused"):
        models[k].load_state_dict(models["fp32"].state_dict())
    use_fused_batchnorm(models["fused"])
    x = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    losses = {}
    for label, model in models.items():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=label != "fp32"):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        losses[label] = loss.item()
    # both bf16 losses sit within ~0.01 of fp32's here
    assert abs(losses["fused"] - losses["fp32"]) < 0.05 and abs(losses["plain"] - losses["fp32"]) < 0.05
    params = {k: dict(m.named_parameters()) for k, m in models.items()}
    cos = {k: [F.cosine_similarity(truth.grad.flatten(), params[k][n].grad.flatten(), dim=0).item()
               for n, truth in params["fp32"].items()] for k in ("plain", "fused")}
    # per parameter the two differ by up to +-0.05 either way over seeds (rounding noise); on
    # average over the model they agree to within 0.015
    assert min(cos["fused"]) > 0.8
    assert sum(cos["fused"]) / len(cos["fused"]) >= sum(cos["plain"]) / len(cos["plain"]) - 0.02
    for a, b in zip(models["plain"].buffers(), models["fused"].buffers()):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)  # running stats, batch counts
    models["plain"].eval(), models["fused"].eval()
    with torch.no_grad():
        torch.testing.assert_close(models["fused"](x), models["plain"](x), atol=1e-2, rtol=1e-2)  # eval: torch's BN


def test_no_switch_when_the_kernels_cannot_be_built(monkeypatch):
    monkeypatch.setattr(fused_bn.FUSED_BN, "module", None)
    monkeypatch.setattr(fused_bn.FUSED_BN, "error", "RuntimeError: no compiler")
    model = create_model("resnet18", num_classes=10, input_size=64)
    assert use_fused_batchnorm(model) == 0
    assert not any(isinstance(m, FusedBatchNorm2d) for m in model.modules()) and type(model.relu) is nn.ReLU


@pytest.mark.parametrize("impl, precision, fused", [("auto", "bf16", 20), ("torch", "bf16", 0), ("auto", "fp32", 0)])
def test_engine_switches_batch_norms_for_bf16_on_the_cpu(tiny_data, impl, precision, fused):
    from cnnbench.data import load_dataset
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.run import build_engine, build_model, model_kwargs

    from train_fixtures import tiny_recipe

    ds = load_dataset("tiny-imagenet", data=str(tiny_data))
    cpu = torch.device("cpu")
    recipe = load_recipe(values=tiny_recipe(tiny_data, model={"name": "resnet18"}, train={"bn_impl": impl}))
    engine = build_engine(recipe, ds, build_model(recipe, model_kwargs(recipe, ds)), cpu, Precision(precision, cpu), Ranks())
    assert sum(isinstance(m, FusedBatchNorm2d) for m in engine.model.modules()) == fused
    assert engine.fast_paths.get("fused_batchnorms", 0) == fused
    # the stem's max pool goes into its batch norm with them (the pools were switched to cnnbench's first)
    assert engine.fast_paths.get("fused_bn_pools", 0) == (1 if fused else 0) == fused_bn.fused_pools(engine.model)


def test_a_failed_build_leaves_torchs_batch_norm_and_says_why(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "fused_bn.cpp"
    broken.write_text("this is not C++;\n")  # fails at once (torch's headers alone take ~50 s to parse)
    monkeypatch.setattr(fused_bn, "FUSED_BN", Kernels(broken, "fused batch-norm kernel"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    assert fused_bn.load_extension() is None
    assert fused_bn.load_error() and "compiling the fused batch-norm kernel" in capsys.readouterr().err
    model = create_model("resnet18", num_classes=10, input_size=64)
    assert use_fused_batchnorm(model) == 0 and type(model.relu) is nn.ReLU


def test_a_one_pixel_map_takes_a_gradient_with_other_strides():
    # At 32 px a ResNet's last stage works on 1x1 maps, and the gradient that comes back through
    # avgpool + flatten + fc is an (N, C) matrix viewed as (N, C, 1, 1): strides (C, 1, 1, 1),
    # while the conv's output x has channels_last strides (C, 1, C, C). Both are channels_last
    # contiguous with the same memory order; the kernel refused the pair until session 9
    # ("grad_y: expected the shape and layout of x"), crashing bf16 training at 32 px.
    fused, ref = pair(20)
    x = torch.empty_strided((3, 20, 1, 1), (20, 1, 20, 20), dtype=torch.bfloat16).copy_(cl_bf16(3, 20, 1, 1, mean=1.0, std=2.0))
    x1, x2 = x.detach().requires_grad_(), x.float().requires_grad_()  # (x1 keeps the conv-like strides)
    ours, expected = fused(x1, relu=True), F.relu(ref(x2))
    upstream = torch.randn(3, 20, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16).view(3, 20, 1, 1)
    assert upstream.stride() != x.stride() and upstream.is_contiguous(memory_format=torch.channels_last)
    (g_ours,) = torch.autograd.grad(ours, [x1], upstream)
    (g_ref,) = torch.autograd.grad(expected, [x2], upstream.float())
    torch.testing.assert_close(g_ours.float(), g_ref, atol=3e-2, rtol=2e-2)


def test_resnet18_trains_at_32px_where_its_last_maps_are_one_pixel():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, input_size=32).to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    use_fused_batchnorm(model)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    for m in (model, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(m(x).float(), y).backward()
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert b.grad is not None and torch.isfinite(b.grad).all(), name
        assert F.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0) > 0.8, name


def test_add_grads_is_torchs_bf16_add():
    module = fused_bn.load_extension()
    for shape in [(16, 64, 8, 8), (3, 5, 1, 1), (7, 33)]:
        if len(shape) == 4:
            a, b = cl_bf16(*shape, seed=1), cl_bf16(*shape, std=3.0, seed=2)
        else:  # a (M, C) matrix
            a, b = torch.randn(*shape).to(torch.bfloat16), (torch.randn(*shape) * 3).to(torch.bfloat16)
        got = module.add_grads(a, b)
        assert torch.equal(got, a + b) and got.stride() == a.stride()
    a = cl_bf16(4, 8, 3, 3)
    with pytest.raises(RuntimeError, match="b: expected the shape of x"):
        module.add_grads(a, cl_bf16(4, 8, 3, 2))
    with pytest.raises(RuntimeError, match="b: expected bfloat16"):
        module.add_grads(a, a.float())
    with pytest.raises(RuntimeError, match=r"a: expected a channels_last \(N, C, H, W\) or contiguous \(M, C\) tensor"):
        module.add_grads(a.contiguous(), a)


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_fork_adds_a_blocks_two_input_gradients_to_autograds_bits(block, monkeypatch):
    # the block's input feeds its first convolution and its skip connection (a downsampling one here,
    # the identity in the second block): _Fork adds their gradients in one C++ pass, to the bits of
    # autograd's own add
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(32, 16 * block.expansion, 1, stride=2, bias=False), nn.BatchNorm2d(16 * block.expansion))
    net = nn.Sequential(block(32, 16, stride=2, downsample=downsample), block(16 * block.expansion, 16))
    net = net.to(memory_format=torch.channels_last)
    use_fused_batchnorm(net)
    x = torch.randn(8, 32, 12, 12).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    calls, module = [], fused_bn.FUSED_BN.module

    class Counting:
        def __getattr__(self, name):
            return getattr(module, name)

        def add_grads(self, a, b):
            calls.append(tuple(a.shape))
            return module.add_grads(a, b)

    monkeypatch.setattr(fused_bn.FUSED_BN, "module", Counting())
    grads = {}
    for forked in (True, False):
        if not forked:
            monkeypatch.setattr(fused_bn, "fork", lambda t: (t, t))
        model = copy.deepcopy(net)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xi)
        out.float().square().sum().backward()
        grads[forked] = [xi.grad] + [p.grad for p in model.parameters()]
    assert len(calls) == 2  # both blocks, each once
    assert all(torch.equal(a, b) for a, b in zip(grads[True], grads[False]))


def test_fork_passes_a_single_gradient_and_other_dtypes_through():
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    a, b = fused_bn.fork(x)
    (a.float().sum() * 2).backward()  # the skip branch unused: its gradient is None
    assert torch.equal(x.grad, torch.full_like(x, 2))
    y = torch.randn(2, 8, 4, 4, requires_grad=True)
    assert fused_bn.fork(y)[0] is y  # fp32: no fork, autograd adds as usual
    with torch.no_grad():
        assert fused_bn.fork(x)[0] is x


@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("channels", [64, 20])
def test_running_stats_in_cpp_have_the_torch_updates_bits(momentum, channels):
    fused, _ref = pair(channels, momentum=momentum)
    in_torch = copy.deepcopy(fused)
    g = torch.Generator().manual_seed(channels)
    for step in range(4):
        mean = torch.randn(channels, generator=g) * (step + 1)
        var = torch.rand(channels, generator=g) * 3
        x = torch.empty(6, channels, 5, 7)  # only its shape counts: 210 rows
        fused._update_running_stats(x, mean, var)
        in_torch._update_running_stats_in_torch(210, mean, var)
    assert int(fused.num_batches_tracked) == int(in_torch.num_batches_tracked) == 4
    assert torch.equal(fused.running_mean, in_torch.running_mean) and torch.equal(fused.running_var, in_torch.running_var)
