"""Medians, spreads, ratios and the linearity verdict, on numbers whose answers are known."""

from __future__ import annotations

import math

import pytest

from cnnbench.bench.stats import Stats, fit_linearity, ratio, speedup_from_times, time_runs


def test_stats_median_spread_and_inversion():
    s = Stats.of([2.0, 1.0, 4.0], "s")
    assert (s.median, s.low, s.high, s.runs) == (2.0, 1.0, 4.0, (2.0, 1.0, 4.0))
    assert s.spread == pytest.approx(1.5)  # (4 - 1) / 2
    rate = s.inverted(128, "images/s")  # 128 images in 2 s -> 64 images/s
    assert (rate.median, rate.low, rate.high, rate.unit) == (64.0, 32.0, 128.0, "images/s")
    assert s.to_dict()["runs"] == [2.0, 1.0, 4.0]


def test_ratio_carries_the_range_the_spreads_allow():
    fast = Stats.of([100.0, 110.0, 90.0])
    slow = Stats.of([10.0, 11.0, 9.0])
    r = ratio(fast, slow)
    assert r.value == pytest.approx(10.0)
    assert r.low == pytest.approx(90 / 11)
    assert r.high == pytest.approx(110 / 9)
    t = speedup_from_times(Stats.of([0.5, 0.4, 0.6]), Stats.of([10.0, 9.0, 11.0]))  # durations
    assert t.value == pytest.approx(20.0) and t.low == pytest.approx(9 / 0.6) and t.high == pytest.approx(11 / 0.4)
    with pytest.raises(ValueError):
        ratio(fast, Stats.of([0.0]))


def test_time_runs_excludes_warmup_and_uses_the_clock():
    ticks = iter(range(100))
    calls = []
    s = time_runs(lambda: calls.append(1), repeats=3, warmup=2, clock=lambda: float(next(ticks)))
    assert len(calls) == 5  # 2 warm-up + 3 timed
    assert s.runs == (1.0, 1.0, 1.0)  # each timed call spans one tick of the fake clock


@pytest.mark.parametrize("exponent, verdict", [(1.0, "linear"), (1.1, "linear"), (0.5, "sublinear"), (2.0, "superlinear")])
def test_linearity_verdict_on_synthetic_power_laws(exponent, verdict):
    work = [1000, 2000, 4000, 8000]
    fit = fit_linearity(work, [3e-3 * w ** exponent for w in work], tolerance=0.15)
    assert fit.exponent == pytest.approx(exponent)
    assert fit.verdict == verdict


def test_linearity_reports_fixed_overhead():
    work = [4000, 8000, 16000]
    seconds = [5.0 + 1e-3 * w for w in work]  # 5 s per epoch of fixed cost, then 1 ms per image
    fit = fit_linearity(work, seconds)
    assert fit.overhead_s == pytest.approx(5.0)
    assert fit.seconds_per_unit == pytest.approx(1e-3)
    assert fit.max_deviation == pytest.approx(0.0, abs=1e-12)
    assert fit.exponent == pytest.approx(math.log(21 / 9) / math.log(4), rel=0.05)  # ~0.61: overhead bends it
    assert fit.verdict == "sublinear"


def test_linearity_refuses_degenerate_input():
    with pytest.raises(ValueError):
        fit_linearity([1.0], [1.0])
    with pytest.raises(ValueError):
        fit_linearity([2.0, 2.0], [1.0, 1.1])
