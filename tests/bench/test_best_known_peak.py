"""BenchContext.best_known_peak: the machine's peak is the best rate read here, in this run or an earlier one."""

from __future__ import annotations

import json

from cnnbench.bench.settings import BenchSettings
from cnnbench.bench.suite import BenchContext


def test_best_known_peak_keeps_the_highest_rate_read_on_this_machine(tmp_path):
    ctx = BenchContext(BenchSettings(), log=lambda m: None, work_dir=tmp_path)
    assert ctx.best_known_peak("bf16", 600.0) == 600.0  # nothing recorded yet: this run's own
    assert ctx.best_known_peak("bf16", 1700.0) == 1700.0  # a faster minute raises the record
    # a later run that only saw slow minutes divides by the record, not by its own low reading
    later = BenchContext(BenchSettings(), log=lambda m: None, work_dir=tmp_path)
    assert later.best_known_peak("bf16", 560.0) == 1700.0
    assert later.best_known_peak("fp32", 200.0) == 200.0  # dtypes are kept apart
    record = json.loads((tmp_path / "peaks.json").read_text())
    (machine, peaks), = record.items()
    assert "cores" in machine and "torch" in machine and peaks == {"bf16": 1700.0, "fp32": 200.0}
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file and renamed


def test_best_known_peak_ignores_an_unreadable_record(tmp_path):
    (tmp_path / "peaks.json").write_text("{not json")
    ctx = BenchContext(BenchSettings(), log=lambda m: None, work_dir=tmp_path)
    assert ctx.best_known_peak("bf16", 900.0) == 900.0
    assert json.loads((tmp_path / "peaks.json").read_text())  # replaced by a good one
