"""Small statistics for rates: Wilson score intervals and a two-proportion z-test."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of successes/trials; (0, 1) when there are no trials.

    Unlike the normal approximation it stays inside [0, 1] and behaves at small n, which is
    where a new model version's first ratings are.
    """
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ProportionTest:
    """Two-sided pooled z-test of p_b - p_a."""

    p_a: float
    p_b: float
    difference: float
    z: float
    p_value: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def two_proportion_test(k_a: int, n_a: int, k_b: int, n_b: int) -> ProportionTest | None:
    """Whether rate b differs from rate a; None when either side has no trials."""
    if n_a <= 0 or n_b <= 0:
        return None
    p_a, p_b = k_a / n_a, k_b / n_b
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return ProportionTest(p_a, p_b, p_b - p_a, 0.0, 1.0)
    z = (p_b - p_a) / se
    p_value = math.erfc(abs(z) / math.sqrt(2))
    return ProportionTest(p_a, p_b, p_b - p_a, z, p_value)
