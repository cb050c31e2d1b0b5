"""SGDWithCopies and the layers that read its bf16 weight copies: torch's SGD bit for bit, the copy
used only while it is current, torch's state format, and the engine's switch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.train import weight_copies
from cnnbench.train.gemm_conv import GemmConv2d
from cnnbench.train.native import Kernels
from cnnbench.train.weight_copies import (SGD_STEP, AdamWithCopies, CopyConv2d, CopyGemmConv2d, CopyLinear,
                                          SGDWithCopies, attach_weight_copies, forward_weight)

pytestmark = pytest.mark.skipif(SGD_STEP.load() is None, reason=f"no C++ toolchain: {SGD_STEP.error}")


def small_net(seed: int = 0) -> nn.Module:
    """A conv (oneDNN), a conv small enough for the matmul path, BN and a linear head, channels_last."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(64, 10))
    net[3].__class__ = GemmConv2d
    return net.to(memory_format=torch.channels_last)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 10, (6,), generator=g))


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, first_seed: int = 0) -> list[float]:
    losses = []
    for s in range(first_seed, first_seed + steps):
        x, y = batch(s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def sgd_twins(make_net, bf16_grads: bool = False, lr: float = 0.05):
    """Two nets from ``make_net`` to train side by side: (ref, torch's SGD, ours, SGDWithCopies with
    the copies attached), momentum 0.9."""
    ref, ours = make_net(), make_net()
    our_opt = SGDWithCopies(ours.parameters(), lr=lr, momentum=0.9)
    attach_weight_copies(ours, our_opt, bf16_grads=bf16_grads)
    return ref, torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9), ours, our_opt


OPTIONS = [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=5e-4), dict(momentum=0.0),
           dict(momentum=0.0, weight_decay=1e-3), dict(momentum=0.5, dampening=0.3, maximize=True)]


@pytest.mark.parametrize("bf16_grads", [False, True], ids=["float32 grads", "bf16 grads"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_same_bits_as_torchs_sgd(options, bf16_grads):
    ref, ours = small_net(), small_net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, **options)
    our_opt = SGDWithCopies(ours.parameters(), lr=0.05, **options)
    assert attach_weight_copies(ours, our_opt, bf16_grads=bf16_grads) == 3
    assert [type(m) for m in ours if type(m) in (CopyConv2d, CopyGemmConv2d, CopyLinear)] == [CopyConv2d, CopyGemmConv2d, CopyLinear]
    assert train(ref, ref_opt, 5) == train(ours, our_opt, 5)  # the forward passes read the copies from step 2 on
    for p, q in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(p, q)
        if options["momentum"]:
            assert torch.equal(ref_opt.state[p]["momentum_buffer"], our_opt.state[q]["momentum_buffer"])
    for layer in (ours[0], ours[3], ours[7]):  # each copy is autocast's cast of the weight it belongs to
        assert torch.equal(layer.weight_copy.tensor, layer.weight.to(torch.bfloat16))
        assert layer.weight_copy.tensor.stride() == layer.weight.stride()


ADAM_OPTIONS = [dict(), dict(weight_decay=1e-2), dict(weight_decay=1e-2, decoupled_weight_decay=True),
                dict(betas=(0.4, 0.99), maximize=True), dict(amsgrad=True)]


@pytest.mark.parametrize("bf16_grads", [False, True], ids=["float32 grads", "bf16 grads"])
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_torchs_adam_to_float32_rounding(options, bf16_grads):
    # torch's default (single-tensor) Adam and AdamW on the CPU, operation for operation; betas
    # (0.4, ...) take lerp's other branch (weight 0.6 >= 0.5); amsgrad runs torch's own step. Not bit
    # for bit: torch takes exp_avg_sq's square root through MKL's vector math, which rounds a few
    # elements in a thousand otherwise than the correctly rounded square root here.
    ref, ours = small_net(), small_net()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, **options)
    our_opt = AdamWithCopies(ours.parameters(), lr=1e-2, **options)
    attach_weight_copies(ours, our_opt, bf16_grads=bf16_grads)
    assert train(ref, ref_opt, 5) == pytest.approx(train(ours, our_opt, 5), rel=1e-4)
    for p, q in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
        assert torch.equal(ref_opt.state[p]["step"], our_opt.state[q]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ref_opt.state[p][key], our_opt.state[q][key], rtol=1e-3, atol=1e-7)
    torch.optim.AdamW(ref.parameters()).load_state_dict(copy.deepcopy(our_opt.state_dict()))  # torch's format


def test_one_adam_step_matches_torch_but_for_its_square_roots():
    # One step on 70,000 values, where torch's vectorised kernels run: the moments are the same
    # bits, and the weights too wherever torch's square root is the correctly rounded one.
    g = torch.Generator().manual_seed(0)
    p, grad = torch.randn(70_000, generator=g), torch.randn(70_000, generator=g) * 0.1
    ref = nn.Parameter(p.clone())
    ref.grad = grad.clone()
    ref_opt = torch.optim.Adam([ref], lr=1e-2)
    ref_opt.step()
    ours = nn.Parameter(p.clone())
    ours.grad = grad.clone()
    our_opt = AdamWithCopies([ours], lr=1e-2)
    our_opt.step()
    state, our_state = ref_opt.state[ref], our_opt.state[ours]
    assert torch.equal(state["exp_avg"], our_state["exp_avg"]) and torch.equal(state["exp_avg_sq"], our_state["exp_avg_sq"])
    exact_root = torch.from_numpy(np.sqrt(state["exp_avg_sq"].numpy())) == state["exp_avg_sq"].sqrt()
    assert exact_root.float().mean() > 0.99  # MKL's root (where torch has it) differs here and there
    assert torch.equal(ref.detach()[exact_root], ours.detach()[exact_root])
    assert (ref.detach() != ours.detach()).sum() <= (~exact_root).sum()


def test_bf16_gradients_stay_on_the_copies_until_the_step():
    net = small_net()
    opt = SGDWithCopies(net.parameters(), lr=0.05, momentum=0.9)
    attach_weight_copies(net, opt, bf16_grads=True)
    train(net, opt, 1)  # the first forward casts (no copies yet): float32 gradients in .grad
    x, y = batch(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    conv = net[0]
    assert conv.weight.grad is None and conv.weight_copy.grad.dtype == torch.bfloat16
    assert net[1].weight.grad is not None  # the batch norm's parameters have no copies
    opt.step()
    assert conv.weight_copy.grad is None


@pytest.mark.parametrize("bf16_grads", [False, True], ids=["float32 grads", "bf16 grads"])
def test_a_weight_used_twice_in_a_forward_pass_gets_torchs_bits(bf16_grads):
    # Autocast casts a weight once per forward pass, so autograd adds its two uses' gradients in
    # bf16 before the cast back; the copy is handed out once per pass (the model's pre-hook) to match.
    class Thrice(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False).to(memory_format=torch.channels_last)

        def forward(self, x):
            y = self.conv(x)
            return self.conv(y) + self.conv(y.flip(2))

    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    ref, ref_opt, ours, our_opt = sgd_twins(Thrice, bf16_grads, lr=0.1)
    for net, opt in ((ref, ref_opt), (ours, our_opt)):
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = net(x).float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    assert torch.equal(ref.conv.weight, ours.conv.weight) and type(ours.conv) is CopyConv2d


@pytest.mark.parametrize("bf16_grads", [False, True], ids=["float32 grads", "bf16 grads"])
def test_two_backward_passes_before_a_step_accumulate_as_torchs(bf16_grads):
    ref, ref_opt, ours, our_opt = sgd_twins(small_net, bf16_grads)
    for net, opt in ((ref, ref_opt), (ours, our_opt)):
        for step in range(3):
            opt.zero_grad(set_to_none=True)
            for half in range(2):  # gradient accumulation over two batches
                x, y = batch(10 * step + half)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(net(x).float(), y)
                loss.backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), ours.parameters()))


def test_the_forward_pass_reads_a_copy_only_while_it_is_current():
    net = small_net()
    opt = SGDWithCopies(net.parameters(), lr=0.05, momentum=0.9)
    attach_weight_copies(net, opt)
    conv = net[0]
    assert forward_weight(conv, conv.weight) is conv.weight  # before the first step there is no copy
    train(net, opt, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        used = forward_weight(conv, conv.weight)
    assert used.dtype == torch.bfloat16 and used.data_ptr() == conv.weight_copy.tensor.data_ptr()
    assert forward_weight(conv, conv.weight) is conv.weight  # outside autocast: the float32 weight
    with torch.autocast("cpu", dtype=torch.float16):
        assert forward_weight(conv, conv.weight) is conv.weight  # another autocast dtype
    with torch.no_grad():
        conv.weight.mul_(0.5)  # any other change to the weight makes the copy stale
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert forward_weight(conv, conv.weight) is conv.weight
    train(net, opt, 1, first_seed=1)  # until the next step writes it again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert forward_weight(conv, conv.weight).data_ptr() == conv.weight_copy.tensor.data_ptr()


def test_a_loaded_state_dict_makes_the_copies_stale_and_training_matches_torch():
    # A resumed run loads weights into a model whose copies were written from others: the load
    # bumps the weights' versions, so the next forward casts the loaded weights, as torch does.
    donor = small_net(seed=1)
    ref, ref_opt, ours, our_opt = sgd_twins(small_net)
    train(ours, our_opt, 2)
    ref.load_state_dict(donor.state_dict())
    ours.load_state_dict(donor.state_dict())
    ref_opt.load_state_dict(copy.deepcopy(our_opt.state_dict()))  # torch's state format both ways (a deep copy, as a checkpoint is: loading shares tensors)
    assert train(ref, ref_opt, 3, first_seed=2) == train(ours, our_opt, 3, first_seed=2)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), ours.parameters()))


def test_checkpoints_move_between_torchs_sgd_and_ours():
    ref, ours = small_net(), small_net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    train(ref, ref_opt, 2)
    ours.load_state_dict(ref.state_dict())
    our_opt = SGDWithCopies(ours.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    attach_weight_copies(ours, our_opt)
    our_opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    assert train(ref, ref_opt, 3, first_seed=2) == train(ours, our_opt, 3, first_seed=2)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), ours.parameters()))


def test_deep_copies_and_state_dicts_carry_no_copy():
    net = small_net()
    opt = SGDWithCopies(net.parameters(), lr=0.05, momentum=0.9)
    attach_weight_copies(net, opt)
    train(net, opt, 1)
    twin = copy.deepcopy(net)  # what the EMA's AveragedModel does
    assert twin[0].weight_copy is None and net[0].weight_copy.tensor is not None
    with torch.no_grad():
        twin[0].weight.zero_()
    x, _ = batch(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the twin computes with its own (zeroed) weight
        assert torch.equal(twin[0](x), torch.zeros_like(twin[0](x)))
    assert set(net.state_dict()) == set(small_net().state_dict())


def test_frozen_layers_are_left_alone_and_other_optimisers_refused():
    net = small_net()
    net[0].weight.requires_grad_(False)
    opt = SGDWithCopies([p for p in net.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    assert attach_weight_copies(net, opt) == 2 and type(net[0]) is nn.Conv2d
    with pytest.raises(TypeError, match="SGDWithCopies"):
        attach_weight_copies(small_net(), torch.optim.SGD(small_net().parameters(), lr=0.1))


def test_without_the_kernel_the_step_is_torchs(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "sgd_step.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(weight_copies, "SGD_STEP", Kernels(broken, "one-pass SGD and Adam steps"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    ref, ours = small_net(), small_net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    our_opt = SGDWithCopies(ours.parameters(), lr=0.05, momentum=0.9)
    assert attach_weight_copies(ours, our_opt) == 0 and type(ours[0]) is nn.Conv2d
    assert weight_copies.SGD_STEP.error and "compiling the one-pass SGD and Adam steps" in capsys.readouterr().err
    assert train(ref, ref_opt, 3) == train(ours, our_opt, 3)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), ours.parameters()))


def test_a_step_torch_takes_over_leaves_the_copies_stale():
    # A float64 parameter is outside the kernel: the whole step is torch's, and the copies, which
    # now lag the weights, are not read.
    net = small_net()
    extra = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    ref = small_net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt = SGDWithCopies([*net.parameters(), extra], lr=0.05, momentum=0.9)
    attach_weight_copies(net, opt, bf16_grads=True)  # torch's step takes the kept gradients too
    train(ref, ref_opt, 2)
    train(net, opt, 1)  # extra has no gradient: the kernel's step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert forward_weight(net[0], net[0].weight) is not net[0].weight
    x, y = batch(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    extra.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert torch.equal(extra.detach(), torch.full((3,), -0.05, dtype=torch.float64))  # torch's first step
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), net.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert forward_weight(net[0], net[0].weight) is net[0].weight


@pytest.mark.parametrize("impl, precision, optim, switched",
                         [("auto", "bf16", {}, True), ("torch", "bf16", {}, False), ("auto", "fp32", {}, False),
                          ("auto", "bf16", {"fused": True}, False), ("auto", "bf16", {"name": "adam"}, True),
                          ("auto", "bf16", {"name": "adamw"}, True), ("auto", "bf16", {"name": "radam"}, False)])
def test_engine_uses_weight_copies_for_bf16_sgd_and_adam_on_the_cpu(tiny_data, impl, precision, optim, switched):
    from cnnbench.data import load_dataset
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.run import build_engine, build_model, model_kwargs

    from train_fixtures import tiny_recipe

    ds = load_dataset("tiny-imagenet", data=str(tiny_data))
    cpu = torch.device("cpu")
    recipe = load_recipe(values=tiny_recipe(tiny_data, optim=optim, train={"optim_impl": impl}))
    model = build_model(recipe, model_kwargs(recipe, ds))
    layers = sum(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    engine = build_engine(recipe, ds, model, cpu, Precision(precision, cpu), Ranks())
    assert isinstance(engine.optimizer, (SGDWithCopies, AdamWithCopies)) == switched
    if switched and optim:
        assert isinstance(engine.optimizer, AdamWithCopies)
        assert engine.optimizer.defaults["decoupled_weight_decay"] == (optim["name"] == "adamw")
    assert engine.fast_paths.get("weight_copies", 0) == (layers if switched else 0) and layers == 4  # simple_cnn
    assert sum(type(m) in (CopyConv2d, CopyLinear) for m in engine.model.modules()) == engine.fast_paths.get("weight_copies", 0)
    assert engine.fast_paths.get("bf16_weight_grads", False) == switched  # no L2, no clipping, one process


@pytest.mark.parametrize("optim", [{"l2": 1e-4}, {"grad_clip": 1.0}])
def test_engine_keeps_float32_gradients_where_the_loop_reads_them(tiny_data, optim):
    from cnnbench.data import load_dataset
    from cnnbench.train.config import load_recipe
    from cnnbench.train.device import Precision
    from cnnbench.train.distributed import Ranks
    from cnnbench.train.run import build_engine, build_model, model_kwargs

    from train_fixtures import tiny_recipe

    ds = load_dataset("tiny-imagenet", data=str(tiny_data))
    cpu = torch.device("cpu")
    recipe = load_recipe(values=tiny_recipe(tiny_data, optim=optim))
    engine = build_engine(recipe, ds, build_model(recipe, model_kwargs(recipe, ds)), cpu, Precision("bf16", cpu), Ranks())
    assert engine.fast_paths["weight_copies"] == 4 and "bf16_weight_grads" not in engine.fast_paths
    assert not any(copy.holds_grad for copy in engine.optimizer.copies.values())


def test_bf16_runs_with_and_without_copies_and_a_resumed_one_agree(tiny_data, tmp_path):
    # The same bits end to end: torch's SGD and autocast's casts (optim_impl: torch) against the
    # one-pass step and its copies, uninterrupted and stopped mid-epoch then resumed (the resumed
    # process starts without copies and casts until its first step writes them), with an EMA.
    import os
    import signal

    from cnnbench.train.checkpoint import load_checkpoint
    from cnnbench.train.config import load_recipe
    from cnnbench.train.run import train_run

    from train_fixtures import tiny_recipe

    def recipe(impl: str):
        return load_recipe(values=tiny_recipe(tiny_data, augment={"hflip": 0.5}, train={
            "epochs": 2, "precision": "bf16", "ema": 0.9, "optim_impl": impl}))

    def stop_at_step_3(engine, progress):
        if progress.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    torch_run = train_run(recipe("torch"), tmp_path / "torch", quiet=True)
    ours = train_run(recipe("auto"), tmp_path / "ours", quiet=True)
    assert train_run(recipe("auto"), tmp_path / "cut", quiet=True, after_step=stop_at_step_3).status == "stopped"
    resumed = train_run(None, tmp_path / "cut", resume=True, quiet=True)
    assert torch_run.status == ours.status == resumed.status == "finished"
    ckpts = [load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("torch", "ours", "cut")]
    for key in ckpts[0]["model"]:
        assert all(torch.equal(ckpts[0]["model"][key], c["model"][key]) for c in ckpts[1:]), key
    for key in ckpts[0]["ema"]:
        assert all(torch.equal(ckpts[0]["ema"][key], c["ema"][key]) for c in ckpts[1:]), key
    assert ckpts[1]["step"] == ckpts[2]["step"] > 3
