"""The benchmark sections, registered by name, and the run that collects them into one document.

A section is a function ``(ctx: BenchContext) -> SectionResult`` registered with
``@register_section(name)``; ``run_suite`` runs the chosen ones in registry order (cheap and
independent first), records the machine and its load average before and after (the machine is
shared, so every number says how busy it was), and returns the JSON-able document.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnbench.bench.results import SCHEMA, SectionResult, markdown_table
from cnnbench.bench.settings import BenchSettings
from cnnbench.errors import CnnbenchError
from cnnbench.files import write_text

SectionFn = Callable[["BenchContext"], SectionResult]
SECTIONS: dict[str, SectionFn] = {}


def register_section(name: str) -> Callable[[SectionFn], SectionFn]:
    """Register a benchmark section under ``name`` (duplicate names raise)."""
    def decorate(fn: SectionFn) -> SectionFn:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} is registered twice")
        SECTIONS[name] = fn
        return fn
    return decorate


# The run order: peaks first (utilisation needs them), cheap and independent sections next, the
# long time-to-accuracy race last. Each module registers its section when imported.
SECTION_MODULES = {
    "peaks": "cnnbench.bench.peaks_section",
    "data": "cnnbench.bench.datapath",
    "memory": "cnnbench.bench.memory",
    "train": "cnnbench.bench.throughput",
    "keras": "cnnbench.bench.keras_vgg",
    "scaling": "cnnbench.bench.scaling",
    "tta": "cnnbench.bench.time_to_accuracy",
}


def list_sections() -> list[str]:
    """Section names in the order they run (built-in ones, then any registered elsewhere)."""
    for module in SECTION_MODULES.values():
        importlib.import_module(module)
    return [n for n in SECTION_MODULES if n in SECTIONS] + [n for n in SECTIONS if n not in SECTION_MODULES]


@dataclass
class BenchContext:
    """What every section gets: the settings, a logger and results shared between sections."""

    settings: BenchSettings
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)
    peaks: dict[str, object] = field(default_factory=dict)
    """Measured matmul peaks by dtype (filled by ``measured_peak``)."""
    results: dict[str, SectionResult] = field(default_factory=dict)
    """Sections already run in this suite (a later section may reuse an earlier one's rows)."""
    datasets: dict[tuple, object] = field(default_factory=dict)
    """Loaded datasets by (name, train_per_class)."""
    work_dir: Path | None = None
    """Scratch folder for extracted JPEG trees; default $CNNBENCH_HOME/bench."""

    def measured_peak(self, dtype: str):
        """This machine's ``dtype`` matmul peak, measured once per run and shared by sections."""
        if dtype not in self.peaks:
            from cnnbench.bench.peaks import measure_matmul_peak

            self.log(f"measuring the {dtype} matmul peak")
            self.peaks[dtype] = measure_matmul_peak(dtype, sizes=tuple(self.settings.peak_sizes),
                                                    repeats=self.settings.repeats)
        return self.peaks[dtype]

    def best_known_peak(self, dtype: str, measured: float) -> float:
        """The best ``dtype`` matmul rate ever read on this machine: ``measured`` (this run's best),
        or higher if an earlier run here read more (kept in ``scratch()/peaks.json`` per CPU,
        core count and torch build). A shared VM's AMX rate swings ~3x between minutes, and a
        short run that only saw slow minutes would otherwise divide by a peak the machine beats."""
        import json

        import torch

        path = self.scratch() / "peaks.json"
        key = f"{_cpu_name()} | {os.cpu_count()} cores | torch {torch.__version__}"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        best = max(measured, float(record.get(key, {}).get(dtype, 0.0)))
        record.setdefault(key, {})[dtype] = best
        write_text(path, json.dumps(record, indent=1))  # temp + rename: never a half-written record
        return best

    def dataset(self, per_class: int | None = None):
        """The Tiny ImageNet cache (``train_per_class=per_class``), loaded once per suite."""
        key = ("tiny-imagenet", per_class)
        if key not in self.datasets:
            from cnnbench.data import load_dataset

            self.datasets[key] = load_dataset("tiny-imagenet", data=self.settings.data, train_per_class=per_class)
        return self.datasets[key]

    def scratch(self) -> Path:
        if self.work_dir is not None:
            return self.work_dir
        from cnnbench.data.sources import cnnbench_home

        return cnnbench_home() / "bench"


def machine_info() -> dict:
    """The machine a result was measured on: CPU, cores, torch build and threads."""
    import torch
    import torchvision

    info = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import keras  # noqa: F401 -- only its version is recorded

        info["keras"] = keras.__version__
    except ImportError:
        info["keras"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (how busy the shared machine was)."""
    return [round(x, 2) for x in os.getloadavg()]


def run_suite(settings: BenchSettings, only: list[str] | None = None, quick: bool = False,
              command: str = "", ctx: BenchContext | None = None) -> dict:
    """Run the chosen sections (all by default) and return the results document."""
    names = list_sections()
    chosen = only or names
    unknown = [n for n in chosen if n not in SECTIONS]
    if unknown:
        raise CnnbenchError(f"--only: unknown section(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    ctx = ctx or BenchContext(settings)
    document = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "quick": quick,
        "settings": settings.to_dict(),
        "machine": machine_info(),
        "load_before": load_average(),
        "sections": {},
    }
    for name in names:
        if name not in chosen:
            continue
        ctx.log(f"== bench {name} (load {load_average()})")
        start = time.perf_counter()
        result = SECTIONS[name](ctx)
        result.seconds = time.perf_counter() - start
        ctx.results[name] = result
        document["sections"][name] = result.to_dict()
        ctx.log(markdown_table(result))
    document["load_after"] = load_average()
    document["targets"] = [t for s in document["sections"].values() for t in s["targets"]]
    return document


def markdown_report(document: dict) -> str:
    """All sections of a results document as Markdown, headed by the machine and its load."""
    machine = document["machine"]
    lines = [f"Measured {document['created']} on {machine['cpu']} ({machine['cores']} cores, "
             f"torch {machine['torch']}, {machine['torch_threads']} threads); load average "
             f"{document['load_before']} before, {document.get('load_after')} after.", ""]
    for section in document["sections"].values():
        lines.append(markdown_table(SectionResult.from_dict(section)))
    return "\n".join(lines)
