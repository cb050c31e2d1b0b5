"""Building the C++ kernels of the CPU fast paths (``fused_bn.cpp``, ``nhwc_ops.cpp``, ``cpu_flags.cpp``) on first use,
and the process-wide CPU settings training switches on: subnormal flushing and glibc's allocator thresholds.

Each source is compiled once with torch's extension builder and cached under torch's extension
folder, keyed by the source (and the headers beside it), the flags, the CPU and the torch build,
so a home folder shared by machines never loads code compiled for another CPU. Compiling takes
about a minute on a 2-core CPU (torch's headers dominate); where no compiler or headers are
present the caller gets the reason and keeps torch's own operators.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# -fno-math-errno: no kernel reads errno, and with it set std::sqrt cannot vectorise (the Adam step
# ran at half torch's fused Adam's speed with it). -mprefer-vector-width=512 (x86 only): GCC's tuning
# for Intel's server cores vectorises with 256-bit registers even where AVX-512 is there; with
# 512-bit ones the batch-norm kernels ran 10-15% faster with the same bits (session 19, scratch,
# 2-core AMX Xeon: the stem's (128, 64, 32, 32) forward 2.31 -> 1.96 ms, backward 3.40 -> 2.98),
# ResNet-18's whole bf16 step +1.7% (medians of 41 alternating steps). A CPU without AVX-512
# ignores it.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
if platform.machine().lower() in ("x86_64", "amd64"):
    FLAGS.append("-mprefer-vector-width=512")


def cpu_signature() -> str:
    """What -march=native compiled for: the CPU's model and flags (a home folder can be shared by machines)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def build_extension(source: Path, what: str):
    """Compile (or load the cached build of) the extension in ``source``; ``what`` names it in the
    one line printed before a compile. Raises whatever the build raised."""
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + " ".join(FLAGS).encode() + cpu_signature().encode()
                         + torch.__version__.encode()).hexdigest()[:12]
    name = f"cnnbench_{source.stem}_{key}"
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its import warns that no CUDA runtime exists, which is no news on a CPU
    try:
        from torch.utils.cpp_extension import get_default_build_root, load

        build = Path(get_default_build_root()) / name
        if not (build / f"{name}.so").exists():
            print(f"cnnbench: compiling the {what} for this CPU (once; about a minute)", file=sys.stderr, flush=True)
        build.mkdir(parents=True, exist_ok=True)
        return load(name=name, sources=[str(source)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                    extra_include_paths=[str(source.parent)], build_directory=str(build), verbose=False)
    finally:
        quiet.setLevel(level)


def describe_failure(exc: Exception) -> str:
    """One line for a failed build: the exception's type and its last line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


class Kernels:
    """One C++ source's compiled module, built on first use: ``load()`` returns it, or None where it
    cannot be built, with the reason in ``error``."""

    def __init__(self, source: Path, what: str):
        self.source, self.what = source, what
        self.module = None
        self.error: str | None = None

    def load(self):
        if self.module is None and self.error is None:
            try:
                self.module = build_extension(self.source, self.what)
            except Exception as exc:  # no compiler, no headers: the callers keep torch's operators
                self.error = describe_failure(exc)
        return self.module


CPU_FLAGS = Kernels(Path(__file__).with_name("cpu_flags.cpp"), "flush-to-zero switch for torch's CPU threads")
"""FTZ/DAZ on every intra-op thread (``flush_denormals``)."""

NHWC_OPS = Kernels(Path(__file__).with_name("nhwc_ops.cpp"), "channels_last im2col and max-pool kernels")
"""im2col, col2im and max pooling on channels_last activations (``gemm_conv``, ``max_pool``), the
2-d transpose of ``gemm_conv.PatchMatmul``'s weight gradient, and the batch pipeline's one-pass crop,
flips and normalisation (``batch_pipeline_kernel``)."""


def batch_pipeline_kernel():
    """``nhwc_ops.cpp``'s ``move_normalize`` for ``BatchPipeline(move_normalize=...)`` (a CPU batch's crop,
    flips, conversion and normalisation in one pass, with the step-by-step path's bits), or None where
    the kernels cannot be built."""
    return NHWC_OPS.module.move_normalize if NHWC_OPS.load() is not None else None


_flushing = False


def flush_denormals(on: bool) -> str:
    """Flush subnormal floats to zero (``on``) or stop, on every thread of torch's CPU pool, and say
    where it took effect. Without the compiled switch, only the calling thread (torch's own
    ``set_flush_denormal``). Turning it off when this never turned it on does nothing."""
    global _flushing
    if not on and not _flushing:
        return "off"
    _flushing = on
    supported = torch.set_flush_denormal(on)  # the calling thread, and torch's own record of the mode
    module = CPU_FLAGS.load()
    if module is None:
        return f"calling thread only ({CPU_FLAGS.error})" if supported else "unsupported on this CPU"
    threads = module.set_flush_denormal(on)
    return f"{threads} thread{'s' if threads != 1 else ''}" if threads else "unsupported on this CPU"


# glibc's mallopt parameters (malloc.h) and their documented defaults
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024}
_KEEP_FREED = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: (1 << 31) - 1, _M_TOP_PAD: 256 << 20}
_keeping = False


def keep_freed_memory(on: bool) -> str:
    """Have glibc's malloc keep freed memory for the next allocation (``on``) or go back to its
    defaults, and say whether it took effect.

    A training step allocates and frees the same activation-sized tensors every step. glibc serves
    those of more than its mmap threshold (128 KB, raised up to 32 MB as freed blocks come back) with
    fresh mappings and returns freed memory at the top of its heap to the kernel past its trim
    threshold, so every step faults its pages in again: ResNet-18's 64 px bf16 step took 7,000-15,000
    page faults and 10-19 ms of system time on this 2-core VM. With large blocks taken from the heap
    (mmap threshold 1 GB), freed memory kept (trim threshold 2 GB) and the heap grown 256 MB at a time,
    it took 0-160 faults and 0.2-1.1 ms: 150-170 ms -> 147-160 ms a step (session 19, scratch, 9 of 10
    alternating process pairs of 15 steps faster, median +6%). The cost: the process keeps its peak heap until
    training ends; ``off`` sets glibc's defaults back (fixed ones: mallopt stops glibc's own
    adjustment of the mmap threshold). Elsewhere than glibc (macOS, musl) nothing changes."""
    global _keeping
    if not on and not _keeping:
        return "off"
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return "unsupported (no glibc mallopt)"
    settings = _KEEP_FREED if on else _MALLOC_DEFAULTS
    if not all(mallopt(ctypes.c_int(key), ctypes.c_int(value)) == 1 for key, value in settings.items()):
        return "unsupported (mallopt refused)"
    _keeping = on
    return "on" if on else "off"


@contextmanager
def freed_memory_kept() -> Iterator[str]:
    """``keep_freed_memory`` for the block (the benchmarks' CPU training, as ``cnnbench train`` runs),
    glibc's defaults after it; yields what ``keep_freed_memory(True)`` said."""
    kept = _keeping
    said = keep_freed_memory(True)
    try:
        yield said
    finally:
        if not kept:
            keep_freed_memory(False)


@contextmanager
def denormals_flushed(device: torch.device) -> Iterator[None]:
    """``flush_denormals`` for the block on a CPU ``device`` (inference: ``evaluate``, ``predict``),
    back to the mode it found after it; elsewhere nothing. Inside training, where it is on already,
    it stays on."""
    if device.type != "cpu" or _flushing:
        yield
        return
    flush_denormals(True)
    try:
        yield
    finally:
        flush_denormals(False)
