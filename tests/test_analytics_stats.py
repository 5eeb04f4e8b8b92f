"""Wilson intervals and the two-proportion test against published values."""

from __future__ import annotations

import pytest

from app.analytics.stats import two_proportion_test, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 20, 0.0089, 0.2361),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_without_trials_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_two_proportion_test_known_value() -> None:
    # 45/100 vs 60/100: pooled z = 2.1239, two-sided p = 0.0337.
    test = two_proportion_test(45, 100, 60, 100)
    assert test is not None
    assert test.z == pytest.approx(2.1239, abs=1e-3)
    assert test.p_value == pytest.approx(0.0337, abs=1e-3)
    assert test.significant(0.05) and not test.significant(0.01)
    assert two_proportion_test(1, 0, 1, 2) is None
    same = two_proportion_test(50, 100, 50, 100)
    assert same is not None and same.p_value == pytest.approx(1.0)
