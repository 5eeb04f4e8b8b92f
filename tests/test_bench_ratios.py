"""bench/ratios.py: both figures of a comparison, and "met" only when both meet the target."""

from __future__ import annotations

import math

import pytest

from bench.ratios import Ratio, headline, paired, verdict


def test_paired_gives_both_figures_and_the_spread() -> None:
    # The two figures disagree when the anchor's slow round is not Herd's slow round.
    r = paired([10.0, 20.0, 40.0], [20.0, 10.0, 50.0])
    assert r.of_medians == pytest.approx(20.0 / 20.0)
    assert r.median_of_rounds == pytest.approx(0.8)
    assert (r.low, r.high) == (pytest.approx(0.5), pytest.approx(2.0))
    assert r.rounds == 3
    herd, anchor = [10.0, 10.0, 30.0], [8.0, 9.0, 40.0]
    r = paired(herd, anchor)
    assert r.of_medians == pytest.approx(10.0 / 9.0)
    assert r.median_of_rounds == pytest.approx(10.0 / 9.0)
    herd, anchor = [12.0, 10.0, 1.0], [10.0, 20.0, 2.0]
    r = paired(herd, anchor)
    assert r.of_medians == pytest.approx(10.0 / 10.0)
    assert r.median_of_rounds == pytest.approx(0.5)


def test_rounds_missing_on_either_side_are_left_out_of_both() -> None:
    r = paired([1.0, math.nan, 3.0, 4.0], [1.0, 2.0, 0.0, 2.0])
    assert r.rounds == 2
    assert (r.low, r.high) == (1.0, 2.0)
    assert r.of_medians == pytest.approx(2.5 / 1.5)
    assert math.isnan(paired([math.nan], [1.0]).of_medians)
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def test_missed_when_either_figure_misses() -> None:
    assert verdict(Ratio(1.0, 1.0, rounds=3), 0.97) == "met"
    assert verdict(Ratio(0.77, 1.18, rounds=3), 0.9) == "missed"
    assert verdict(Ratio(1.18, 0.77, rounds=3), 0.9) == "missed"
    # Lower is better (a latency ratio): both must be at or under the target.
    assert verdict(Ratio(1.2, 1.25, rounds=5), 1.25, higher_is_better=False) == "met"
    assert verdict(Ratio(1.2, 1.3, rounds=5), 1.25, higher_is_better=False) == "missed"


def test_too_few_rounds_is_not_enough_data_but_a_miss_stays_a_miss() -> None:
    assert verdict(Ratio(0.92, 0.92, rounds=2), 0.9) == "not enough data"
    assert verdict(Ratio(0.92, 0.92, rounds=2), 0.9, min_rounds=2) == "met"
    assert verdict(Ratio(0.85, 0.92, rounds=1), 0.9) == "missed"
    assert verdict(Ratio(math.nan, math.nan), 0.9) == "not enough data"


def test_headline_names_both_figures_the_spread_and_the_verdict() -> None:
    line = headline("herd / llama-server", Ratio(0.77, 1.18, 0.77, 1.19, 3), 0.9)
    assert line == (
        "herd / llama-server: 0.77x ratio of medians, 1.18x median of 3 per-round ratios, "
        "0.77-1.19; target >= 0.9x: missed"
    )
    # A miss that two decimals would round onto the target shows a third decimal.
    line = headline("json / free", Ratio(0.797, 1.08, rounds=3), 0.8)
    assert "0.797x ratio of medians" in line and line.endswith("missed")
    assert "per-round ratios;" in line  # no spread where the rounds are not known
    line = headline("p95 with batch / alone", Ratio(1.1, 1.2, rounds=3), 1.25, False)
    assert line.endswith("target <= 1.25x: met")
