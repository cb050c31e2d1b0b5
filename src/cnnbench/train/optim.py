"""Optimisers (a table of torch.optim factories) and the two kinds of weight penalty.

- ``weight_decay`` is torch.optim's own: coupled L2 in SGD/Adam/RAdam, decoupled in AdamW;
  BN parameters and biases are left out when ``no_decay_bn_bias`` (the modern default).
- ``l2`` is the Keras ``kernel_regularizer=l2(l)`` the reports used: ``l * sum(w ** 2)`` over
  the chosen layers' weights, *added to the loss* (so it is scaled by the learning rate and,
  with Adam, by the adaptive denominators — not the same thing as weight decay).

Adam and AdamW, and SGD where it saves a pass, run torch.optim's fused kernels (``optim.fused``):
one pass over each parameter, its gradient and its state. On the CPU torch's default is a loop
of single-tensor ops, one pass per term, so fused SGD only pays with Nesterov or weight decay.
``python benchmarks/probe_optim.py`` (ResNet-18's 11.3 M parameters and real gradients, one
``step()``, ms, this 2-core CPU, medians of 3 alternating rounds):

    optimiser                                   default   fused
    SGD, momentum 0.9                              4.73    5.63
    SGD, momentum 0.9, Nesterov                    7.94    6.00
    SGD, momentum 0.9, weight decay                7.71    6.20
    SGD, momentum 0.9, Nesterov, weight decay     10.78    6.04   (the modern recipe)
    SGD, no momentum                               2.10    4.81
    Adam                                          19.67    7.71
    AdamW                                         23.26    8.15

The fused kernels round in another order than the default path, so their weights differ from
it in the last bits (6e-8 after 5 steps of SGD with momentum); each path is deterministic, and
both keep the same state, so a checkpoint from either resumes on the other.

On the CPU under bf16 autocast (``train.optim_impl: auto``), SGD, Adam and AdamW with
``optim.fused`` left null run neither: ``cnnbench.train.weight_copies``' one-pass step, which
also writes the bf16 weight copies the next forward pass reads (torch's default path's
arithmetic, the same state).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnbench.errors import CnnbenchError
from cnnbench.train.config import OptimConfig

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # (param groups, OptimConfig, **torch options)

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda groups, c, **kw: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, **kw),
    "adam": lambda groups, c, **kw: torch.optim.Adam(groups, lr=c.lr, betas=c.betas, eps=c.eps, **kw),
    "adamw": lambda groups, c, **kw: torch.optim.AdamW(groups, lr=c.lr, betas=c.betas, eps=c.eps, **kw),
    "radam": lambda groups, c, **kw: torch.optim.RAdam(groups, lr=c.lr, betas=c.betas, eps=c.eps, **kw),
}

FUSED = {"optimizers": ("sgd", "adam", "adamw"), "devices": ("cpu", "cuda")}
"""Where torch's fused kernel may run. torch has fused SGD/Adam/AdamW for more devices (mps,
xpu), but only these two are tested here."""


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """Trainable parameters split into a decayed group and (optionally) a no-decay group holding
    1-d tensors: BN/LayerNorm scales and shifts and all biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_bn_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def use_fused(cfg: OptimConfig, device: torch.device) -> bool:
    """Whether ``cfg``'s optimiser runs torch's fused kernel on ``device`` (``optim.fused``): where
    asked, or, for null, where it measured faster (the module's table): Adam and AdamW, and SGD on
    the CPU with Nesterov or weight decay; and SGD on CUDA, where torch's documentation ranks fused
    above its foreach default (not measured here: no GPU was lent)."""
    available = cfg.name in FUSED["optimizers"] and device.type in FUSED["devices"]
    if cfg.fused and not available:
        raise CnnbenchError(f"optim.fused: true needs {', '.join(FUSED['optimizers'])} on "
                            f"{' or '.join(FUSED['devices'])}, got {cfg.name} on {device.type}; "
                            "set optim.fused to null or false")
    if cfg.fused is not None:
        return cfg.fused
    if cfg.name == "sgd" and device.type == "cpu":  # available; faster only where it saves a pass
        return cfg.nesterov or cfg.weight_decay > 0
    return available


def writes_weight_copies(cfg: OptimConfig, device: torch.device) -> bool:
    """Whether ``cfg``'s optimiser can run with bf16 weight copies on ``device`` (``train.optim_impl:
    auto`` decides whether it should): SGD, Adam or AdamW on the CPU with ``optim.fused`` left to
    cnnbench."""
    return cfg.name in ("sgd", "adam", "adamw") and device.type == "cpu" and cfg.fused is None


def create_optimizer(model: nn.Module, cfg: OptimConfig, weight_copies: bool = False) -> torch.optim.Optimizer:
    """The torch.optim optimiser named by ``cfg.name`` over the model's trainable parameters, with
    torch's fused kernel where ``use_fused`` says so (on the parameters' device); with
    ``weight_copies`` (where ``writes_weight_copies``), SGD is ``SGDWithCopies`` and Adam or AdamW
    ``AdamWithCopies``: torch's update in one pass per tensor that also writes the bf16 weight copies
    ``attach_weight_copies`` registers."""
    if cfg.name == "sgd" and cfg.nesterov and cfg.momentum <= 0:
        raise CnnbenchError(f"optim.nesterov: Nesterov SGD needs momentum > 0, got momentum={cfg.momentum}")
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias)
    device = next((p.device for g in groups for p in g["params"]), torch.device("cpu"))
    if weight_copies and writes_weight_copies(cfg, device):
        # imported here: the module switches model layers and builds its C++ kernel on first use
        from cnnbench.train.weight_copies import AdamWithCopies, SGDWithCopies

        if cfg.name == "sgd":
            return SGDWithCopies(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        return AdamWithCopies(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, decoupled_weight_decay=cfg.name == "adamw")
    return OPTIMIZERS[cfg.name](groups, cfg, **({"fused": True} if use_fused(cfg, device) else {}))


def resolve_l2_layers(model: nn.Module, names: list[str] | None) -> list[str]:
    """Module names carrying the Keras-style L2: the recipe's list, else the model's own
    ``l2_layers``, else every Conv/Linear layer. Unknown names are an error."""
    modules = dict(model.named_modules())
    if names is None:
        names = list(getattr(model, "l2_layers", []) or [])
        if not names:
            names = [n for n, m in modules.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    missing = [n for n in names if n not in modules or not isinstance(getattr(modules[n], "weight", None), torch.Tensor)]
    if missing:
        raise CnnbenchError(f"optim.l2_layers: {', '.join(missing)} are not layers with a weight in this model")
    return names


class KerasL2:
    """``l2 * sum(w ** 2)`` over the weights of the named layers (Keras' kernel_regularizer).

    The loop adds ``value()`` to the loss as a number and ``add_grad()``'s ``2 * l2 * w`` to the
    weights' gradients after backward, instead of putting ``sum(w ** 2)`` into autograd's graph:
    the same gradient (to rounding), without the graph's squared copy of every weight and the
    backward pass that writes ``2 * w`` beside the gradient before adding it. A whole bf16
    training step, ``python benchmarks/probe_l2.py`` (this 2-core CPU, medians of 3 alternating
    rounds): report 000's model E (41.8 M weights under L2, Adam, batch 32) 301 -> 186 ms,
    report 002's simple CNN (29.7 M, SGD, batch 100) 250 -> 139 ms."""

    def __init__(self, model: nn.Module, l2: float, layer_names: list[str]):
        modules = dict(model.named_modules())
        self.l2 = l2
        self.layer_names = layer_names
        self.weights = [modules[n].weight for n in layer_names]

    @torch.no_grad()
    def value(self) -> torch.Tensor:
        """The penalty (no graph): one read of each weight."""
        norms = torch.stack([torch.linalg.vector_norm(w, dtype=torch.float32) for w in self.weights])
        return self.l2 * norms.square().sum()

    @torch.no_grad()
    def add_grad(self) -> None:
        """Add the penalty's gradient, ``2 * l2 * w``, to each weight's (unscaled) gradient; a
        frozen weight (no gradient) keeps none, as under autograd."""
        for w in self.weights:
            if w.grad is not None:
                w.grad.add_(w, alpha=2.0 * self.l2)


def create_l2_penalty(model: nn.Module, cfg: OptimConfig) -> KerasL2 | None:
    """The loss term for ``cfg.l2`` (None when l2 is 0)."""
    if cfg.l2 <= 0:
        return None
    return KerasL2(model, cfg.l2, resolve_l2_layers(model, cfg.l2_layers))
