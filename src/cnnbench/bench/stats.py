"""Numbers from repeated timings: medians with their spread, ratios between them, linearity.

Every benchmark number is the median of several runs with the spread (min..max) beside it
(STYLE habit 8). Ratios between two measured quantities carry a conservative range built
from the two spreads, so a "3.1x" that might really be "2.4x" shows that it might.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from cnnbench.errors import CnnbenchError


@dataclass(frozen=True)
class Stats:
    """The summary of several runs of one measurement."""

    median: float
    """Median over the runs (the number quoted)."""
    low: float
    """Smallest run."""
    high: float
    """Largest run."""
    runs: tuple[float, ...]
    """Every run, in the order measured."""
    unit: str = ""
    """What the numbers are (s, images/s, GFLOP/s, ...)."""

    @classmethod
    def of(cls, runs: Sequence[float], unit: str = "") -> "Stats":
        """Summarise ``runs`` (at least one finite number)."""
        values = tuple(float(v) for v in runs)
        if not values:
            raise ValueError("Stats.of: no runs to summarise")
        return cls(statistics.median(values), min(values), max(values), values, unit)

    @property
    def spread(self) -> float:
        """(high - low) / median: 0.05 reads as a 5% spread between the best and worst run."""
        return (self.high - self.low) / self.median if self.median else math.inf

    def scaled(self, factor: float, unit: str) -> "Stats":
        """The same runs multiplied by ``factor`` (e.g. seconds per batch -> images/s uses ``inverted``)."""
        return Stats.of([v * factor for v in self.runs], unit)

    def inverted(self, numerator: float, unit: str) -> "Stats":
        """``numerator / run`` for each run (seconds for a fixed amount of work -> a rate)."""
        return Stats.of([numerator / v for v in self.runs], unit)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["runs"] = list(self.runs)
        d["spread"] = self.spread
        return d


@dataclass(frozen=True)
class Ratio:
    """a / b of two measured quantities, with the range the two spreads allow."""

    value: float
    """median(a) / median(b)."""
    low: float
    """low(a) / high(b): the least it could be given the runs."""
    high: float
    """high(a) / low(b): the most it could be."""

    def to_dict(self) -> dict:
        return asdict(self)


def ratio(a: Stats, b: Stats) -> Ratio:
    """How many times ``a`` is ``b`` (for rates: a speed-up of a over b)."""
    if b.median <= 0 or b.low <= 0:
        raise ValueError(f"ratio: the denominator must be positive, got median {b.median}, low {b.low}")
    return Ratio(a.median / b.median, a.low / b.high, a.high / b.low)


def speedup_from_times(fast: Stats, slow: Stats) -> Ratio:
    """How many times faster ``fast`` is than ``slow`` when both are durations of the same work."""
    return ratio(slow, fast)


def time_runs(fn: Callable[[], object], repeats: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> Stats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; seconds per call.

    Warm-up calls are excluded because the first call pays one-off costs (allocator growth,
    oneDNN primitive creation, torch.compile) that a long training run amortises away.
    """
    if repeats < 1:
        raise CnnbenchError(f"repeats: expected at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return Stats.of(times, "s")


@dataclass(frozen=True)
class Linearity:
    """How a cost grows with the work it does: t ~ work ** exponent."""

    exponent: float
    """Slope of the least-squares fit of log(seconds) on log(work); 1 means linear."""
    overhead_s: float
    """Intercept of the straight-line fit seconds = overhead + rate * work (fixed cost per epoch)."""
    seconds_per_unit: float
    """Slope of that straight-line fit."""
    max_deviation: float
    """Largest relative distance of a point from the straight-line fit."""
    verdict: str
    """linear, sublinear or superlinear (exponent within / below / above 1 +- tolerance)."""
    tolerance: float
    """The tolerance used for the verdict."""

    def to_dict(self) -> dict:
        return asdict(self)


def fit_linearity(work: Sequence[float], seconds: Sequence[float], tolerance: float = 0.15) -> Linearity:
    """Decide whether ``seconds`` grows linearly with ``work`` (at least two distinct sizes).

    The verdict uses the log-log slope because it is scale-free: doubling the work should
    double the time whatever the units. A fixed per-epoch overhead shows as a slope below one
    (sublinear) and as a positive ``overhead_s``; cache spills at large sizes as a slope above.
    """
    if len(work) != len(seconds) or len(work) < 2:
        raise ValueError(f"fit_linearity: need two or more (work, seconds) pairs, got {len(work)} and {len(seconds)}")
    if min(work) <= 0 or min(seconds) <= 0:
        raise ValueError("fit_linearity: work and seconds must be positive")
    if len(set(work)) < 2:
        raise ValueError("fit_linearity: need at least two different amounts of work")
    exponent, _ = statistics.linear_regression([math.log(w) for w in work], [math.log(s) for s in seconds])
    rate, overhead = statistics.linear_regression(list(work), list(seconds))
    deviation = max(abs(s - (overhead + rate * w)) / s for w, s in zip(work, seconds))
    if exponent < 1 - tolerance:
        verdict = "sublinear"
    elif exponent > 1 + tolerance:
        verdict = "superlinear"
    else:
        verdict = "linear"
    return Linearity(exponent, overhead, rate, deviation, verdict, tolerance)

