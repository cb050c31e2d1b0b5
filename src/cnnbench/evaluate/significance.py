"""Paired significance test between two classifiers scored on the same images (McNemar).

Only the discordant images count: ``b`` = A right and B wrong, ``c`` = A wrong and B right.
Under "no difference" each discordant image is a fair coin, so for few of them the exact
binomial test is used; above ``EXACT_BELOW`` discordant images the chi-squared statistic with
continuity correction (Edwards 1948), as in Dietterich (1998), "Approximate statistical tests
for comparing supervised classification learning algorithms". Hand-written because it is a
dozen lines and scipy is not otherwise a dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Below this many discordant pairs the chi-squared approximation is poor; use the exact test
# (the usual rule of thumb: b + c < 25).
EXACT_BELOW = 25


@dataclass
class McNemarResult:
    """The paired test between models A and B."""

    n: int
    """Images scored by both."""
    a_only: int
    """b: images A got right and B got wrong."""
    b_only: int
    """c: images B got right and A got wrong."""
    statistic: float
    """Chi-squared statistic (NaN for the exact test)."""
    p_value: float
    method: str
    """"exact binomial" or "chi-squared with continuity correction"."""


def exact_binomial_p(b: int, c: int) -> float:
    """Two-sided exact p-value of min(b, c) successes in b + c fair coin flips."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar's test on two (N,) bool arrays of per-image correctness over the same images."""
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired test needs the same images: {correct_a.shape} vs {correct_b.shape}")
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    if b + c < EXACT_BELOW:
        return McNemarResult(len(correct_a), b, c, math.nan, exact_binomial_p(b, c), "exact binomial")
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    # Survival function of chi-squared with one degree of freedom: P(X > x) = erfc(sqrt(x / 2)).
    p = math.erfc(math.sqrt(statistic / 2))
    return McNemarResult(len(correct_a), b, c, statistic, p, "chi-squared with continuity correction")
