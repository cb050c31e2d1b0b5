"""Optimiser table, the two weight penalties, and every learning-rate schedule's numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnbench.errors import CnnbenchError
from cnnbench.train.config import OptimConfig, ScheduleConfig
from cnnbench.train.optim import create_l2_penalty, create_optimizer, resolve_l2_layers
from cnnbench.train.schedule import Horizon, create_schedule


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("radam", torch.optim.RAdam)])
def test_optimizer_table_and_no_decay_groups(name, cls):
    opt = create_optimizer(small_net(), OptimConfig(name=name, lr=0.01, weight_decay=5e-4, nesterov=name == "sgd"))
    assert type(opt) is cls
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert [p.ndim for p in decayed["params"]] == [4, 2]  # conv and linear weights
    assert len(plain["params"]) == 4  # conv bias, BN weight and bias, linear bias
    if name == "sgd":
        assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("options,fused", [
    (dict(name="sgd"), False),                      # plain momentum: torch's default loop is faster on the CPU
    (dict(name="sgd", momentum=0.0), False),
    (dict(name="sgd", nesterov=True), True),        # a pass saved: fused is faster
    (dict(name="sgd", weight_decay=5e-4), True),
    (dict(name="adam"), True), (dict(name="adamw"), True),
    (dict(name="radam"), False),                    # torch has no fused RAdam
])
def test_fused_kernels_where_they_measured_faster(options, fused):
    auto = create_optimizer(small_net(), OptimConfig(lr=0.01, **options))  # optim.fused: null (the default), CPU
    assert bool(auto.defaults.get("fused")) is fused
    assert not create_optimizer(small_net(), OptimConfig(lr=0.01, fused=False, **options)).defaults.get("fused")
    if options["name"] != "radam":
        assert create_optimizer(small_net(), OptimConfig(lr=0.01, fused=True, **options)).defaults["fused"] is True
    else:
        with pytest.raises(CnnbenchError, match="optim.fused: true needs sgd, adam, adamw on cpu or cuda, got radam on cpu"):
            create_optimizer(small_net(), OptimConfig(lr=0.01, fused=True, **options))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_steps_match_the_default_path(name):
    """Five steps of the same gradients through torch's fused kernel and its default path give the
    same weights to float rounding (the fused kernels round in another order: SGD with
    momentum differs by 6e-8 here); the state dicts have the same keys, so checkpoints load into either."""
    cfg = dict(name=name, lr=0.05, weight_decay=1e-3, nesterov=name == "sgd", no_decay_bn_bias=False)
    nets = [small_net(), small_net()]
    opts = [create_optimizer(net, OptimConfig(**cfg, fused=fused)) for net, fused in zip(nets, (True, False))]
    assert opts[0].defaults["fused"] and not opts[1].defaults.get("fused")
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in nets[0].parameters()]
        for net, opt in zip(nets, opts):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    moved = [(a - b).abs().max().item() for a, b in zip(nets[0].parameters(), small_net().parameters())]
    assert min(moved) > 1e-3  # the steps did move every weight
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    fused_state, default_state = (opt.state_dict()["state"] for opt in opts)
    assert [sorted(s) for s in fused_state.values()] == [sorted(s) for s in default_state.values()]
    opts[1].load_state_dict(opts[0].state_dict())  # a fused run's checkpoint resumes on the default path


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(CnnbenchError, match="Nesterov SGD needs momentum > 0"):
        create_optimizer(small_net(), OptimConfig(nesterov=True, momentum=0.0))


def in_graph_l2_grads(net, penalty, x, y):
    """The reference: the penalty inside the loss, its gradient from autograd (Keras' way)."""
    net.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(net(x), y) + penalty.l2 * sum(w.pow(2).sum() for w in penalty.weights)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


def test_keras_l2_is_added_to_the_loss_not_decay():
    net = small_net()
    penalty = create_l2_penalty(net, OptimConfig(l2=0.01, l2_layers=["3"]))
    torch.testing.assert_close(penalty.value(), 0.01 * net[3].weight.detach().pow(2).sum())
    assert not penalty.value().requires_grad  # a number in the loss: its gradient comes from add_grad
    x, y = torch.randn(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    ref_loss, ref_grads = in_graph_l2_grads(net, penalty, x, y)
    net.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(net(x), y) + penalty.value()
    loss.backward()
    plain_conv_grad = net[0].weight.grad.clone()
    penalty.add_grad()
    torch.testing.assert_close(loss.detach(), ref_loss)
    for got, want in zip([p.grad for p in net.parameters()], ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(net[0].weight.grad, plain_conv_grad, rtol=0, atol=0)  # only the chosen layer
    net[3].weight.grad = None
    penalty.add_grad()  # a frozen (gradient-less) weight gets none, as under autograd
    assert net[3].weight.grad is None
    assert create_l2_penalty(net, OptimConfig(l2=0.0)) is None


@pytest.mark.parametrize("scaled,clip", [(False, None), (True, None), (True, 0.5)])
def test_loop_step_with_l2_matches_the_penalty_in_the_graph(scaled, clip):
    """The loop adds the L2 gradient after unscaling (fp16's GradScaler) and before clipping: one
    SGD step lands where the in-graph penalty's step does."""
    from types import SimpleNamespace

    from cnnbench.train.loop import _optimizer_step

    x, y = torch.randn(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    ref_net = small_net()
    ref_penalty = create_l2_penalty(ref_net, OptimConfig(l2=0.05))
    in_graph_l2_grads(ref_net, ref_penalty, x, y)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(ref_net.parameters(), clip)
    torch.optim.SGD(ref_net.parameters(), lr=0.1).step()

    net = small_net()
    penalty = create_l2_penalty(net, OptimConfig(l2=0.05))
    engine = SimpleNamespace(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), l2=penalty,
                             scaler=torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled), grad_clip=clip,
                             schedule=SimpleNamespace(step_batch=lambda: None), ema=None)
    _optimizer_step(engine, nn.functional.cross_entropy(net(x), y) + penalty.value())
    for got, want in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_l2_layers_default_to_the_models_list_then_every_conv_linear():
    net = small_net()
    assert resolve_l2_layers(net, None) == ["0", "3"]
    net.l2_layers = ["3"]
    assert resolve_l2_layers(net, None) == ["3"]
    with pytest.raises(CnnbenchError, match="optim.l2_layers: 2, nope are not layers with a weight"):
        resolve_l2_layers(net, ["3", "2", "nope"])  # 2 is the Flatten


def lrs(cfg: ScheduleConfig, epochs=10, steps=10, lr=0.1, momentum=0.9) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=momentum)
    schedule = create_schedule(opt, cfg, Horizon(epochs, steps), lr)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step_batch()
    return out


def test_inverse_time_is_keras_decay():
    values = lrs(ScheduleConfig(name="inverse_time", decay=1e-2))
    assert [values[t] for t in (0, 1, 50)] == pytest.approx([0.1, 0.1 / 1.01, 0.1 / 1.5])


def test_step_divides_by_ten_every_seven_epochs():
    values = lrs(ScheduleConfig(name="step", step_epochs=7, gamma=0.1), epochs=15, steps=4)
    assert values[27] == pytest.approx(0.1) and values[28] == pytest.approx(0.01) and values[56] == pytest.approx(0.001)


def test_cosine_warms_up_then_decays_to_the_floor():
    values = lrs(ScheduleConfig(name="cosine", warmup_epochs=2, min_lr=0.001))
    assert values[0] == pytest.approx(0.1 / 20) and values[19] == pytest.approx(0.1)
    assert values[20] == pytest.approx(0.1) and values[60] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[-1] == pytest.approx(0.001, abs=1e-4)


def test_onecycle_peaks_at_pct_start():
    values = lrs(ScheduleConfig(name="onecycle", pct_start=0.25))
    assert max(values) == pytest.approx(0.1) and values.index(max(values)) in (24, 25)
    assert values[0] < 0.01 and values[-1] < 1e-4


def test_cyclic_cosine_restarts_and_marks_snapshot_epochs():
    cfg = ScheduleConfig(name="cyclic_cosine", cycles=2)
    values = lrs(cfg)
    assert values[0] == pytest.approx(0.1) and values[50] == pytest.approx(0.1) and values[49] < 0.001
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert create_schedule(opt, cfg, Horizon(10, 3), 0.1).snapshot_epochs == [4, 9]
    with pytest.raises(CnnbenchError, match=r"train.epochs \(9\) must be a multiple of cycles \(2\)"):
        create_schedule(opt, cfg, Horizon(9, 3), 0.1)


def test_plateau_reduces_after_patience_epochs_on_val_loss():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = create_schedule(opt, ScheduleConfig(name="plateau", patience=2, gamma=0.5), Horizon(10, 5), 0.1)
    schedule.step_batch()  # per-epoch schedule: batches do not move it
    for loss in [1.0, 1.0, 1.0]:
        schedule.step_epoch(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    schedule.step_epoch(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    schedule.step_epoch(None)  # an epoch without evaluation changes nothing
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
