"""Many processes: torchrun + DistributedDataParallel, and stopping cleanly on a signal.

``torchrun --nproc_per_node N -m cnnbench train RECIPE.yaml`` starts N copies; each reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment (set by torchrun), joins the process
group (on CUDA: nccl for the GPU tensors, gloo for the small CPU ones; gloo on CPU), reads its own shard of the cache through
``BatchLoader(rank=, world_size=)``, and all-reduces its metric sums. Only rank 0 writes the
run folder. Without those variables this is a single process and nothing here does anything.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> Ranks:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group when world_size > 1; on CUDA each rank takes GPU ``local_rank``."""
    if not ranks.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(device))
    return device


def process_group_backend(device: torch.device) -> str:
    """The process group's backend for training on ``device``. The engine's own collectives (step
    flags, metric sums, RNG-state gathers) use small CPU tensors, which plain "nccl" cannot carry
    ("No backend type associated with device type cpu"): on CUDA, DDP's gradients go through
    NCCL and CPU tensors through gloo."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a small tensor over all ranks; identity in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return values


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN statistics); nothing in a single process. DDP does so
    only before a training forward, which then moves each rank's copy with its own batch."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def gather_to_all(value: torch.Tensor) -> torch.Tensor:
    """(world_size, *value.shape): every rank's ``value`` (same shape on all), stacked by rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value[None]
    parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, value)
    return torch.stack(parts)


class StopRequest:
    """Set by SIGINT/SIGTERM while training: the loop finishes the current step, writes a
    checkpoint and returns. A second Ctrl-C aborts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str = "request") -> None:
        self.signal_name = name

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
