"""Benchmarks: cnnbench measured against the way the reports worked, side by side in one process.

``run_suite(build_settings(quick=True))`` runs every registered section (``list_sections()``)
and returns one JSON-able document; ``cnnbench bench`` is the command. The measuring functions
are public so that ``benchmarks/*.py`` scripts call them instead of copying them:

- ``measure_matmul_peak``, ``training_flops_per_image``, ``utilisation``  (peaks.py)
- ``plain_train_step``, ``PlainStepper``, ``interleaved_rounds``, ``interleaved_rates``, ``measure_paths``  (throughput.py)
- ``EngineStepper``, ``throughput_recipe``, ``build_recipe_engine``, ``train_within_budget``  (engine_runs.py)
- ``cnnbench_epoch``, ``reference_epoch``, ``decode_epoch``  (datapath.py)
- ``prepare_probe``, ``train_probe``: peak RSS of a child process  (memory.py)
- ``Stats``, ``ratio``, ``fit_linearity``  (stats.py)
"""

from cnnbench.bench.peaks import measure_matmul_peak, training_flops_per_image, utilisation
from cnnbench.bench.settings import BenchSettings, build_settings
from cnnbench.bench.stats import Linearity, Ratio, Stats, fit_linearity, ratio, speedup_from_times
from cnnbench.bench.suite import BenchContext, list_sections, markdown_report, register_section, run_suite

__all__ = [
    "BenchContext", "BenchSettings", "Linearity", "Ratio", "Stats", "build_settings", "fit_linearity",
    "list_sections", "markdown_report", "measure_matmul_peak", "ratio", "register_section", "run_suite",
    "speedup_from_times", "training_flops_per_image", "utilisation",
]
