"""Ratios to an anchor measured side by side, and the verdict a headline gives them.

Every benchmark that compares Herd with an anchor runs both in rounds (each round measures
both, in a rotated order) and reports two figures, because they disagree on a noisy machine:

- the ratio of the medians: median of Herd's per-round values over the anchor's median;
- the median of the per-round ratios, with their spread (lowest and highest).

A target is "met" only when both figures meet it, "missed" when either misses, and "not
enough data" when both meet it but fewer than min_rounds rounds back them. Used by the
scripts in bench/ (run as scripts, so imported as `ratios`; tests import `bench.ratios`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_ROUNDS = 3


@dataclass(frozen=True)
class Ratio:
    """Both figures of one comparison; low/high are NaN where the rounds are not known."""

    of_medians: float
    median_of_rounds: float
    low: float = math.nan
    high: float = math.nan
    rounds: int = 0


def _usable(value: float, anchor: float) -> bool:
    return math.isfinite(value) and math.isfinite(anchor) and anchor != 0


def paired(values: Sequence[float], anchor: Sequence[float]) -> Ratio:
    """values[i] and anchor[i] were measured in the same round i. Rounds where either is
    missing (NaN) are left out of both figures, so that both describe the same rounds."""
    if len(values) != len(anchor):
        raise ValueError(f"{len(values)} values against {len(anchor)} anchor values")
    pairs = [(v, a) for v, a in zip(values, anchor, strict=True) if _usable(v, a)]
    if not pairs:
        return Ratio(math.nan, math.nan)
    per_round = [v / a for v, a in pairs]
    anchor_median = statistics.median(a for _, a in pairs)
    return Ratio(
        of_medians=statistics.median(v for v, _ in pairs) / anchor_median,
        median_of_rounds=statistics.median(per_round),
        low=min(per_round),
        high=max(per_round),
        rounds=len(per_round),
    )


def _meets(value: float, target: float, higher_is_better: bool) -> bool:
    if not math.isfinite(value):
        return False
    return value >= target if higher_is_better else value <= target


def verdict(
    ratio: Ratio, target: float, higher_is_better: bool = True, min_rounds: int = MIN_ROUNDS
) -> str:
    """ "met", "missed" (either figure misses), or "not enough data"."""
    figures = (ratio.of_medians, ratio.median_of_rounds)
    if not all(math.isfinite(f) for f in figures):
        return "not enough data"
    if not all(_meets(f, target, higher_is_better) for f in figures):
        return "missed"
    return "met" if ratio.rounds >= min_rounds else "not enough data"


def _figure(value: float, target: float | None, higher_is_better: bool) -> str:
    """Two decimals, or three where two would round a miss onto the target (0.797 vs 0.8)."""
    text = f"{value:.2f}"
    if target is None or not math.isfinite(value) or float(text) != round(target, 2):
        return text
    return text if _meets(value, target, higher_is_better) else f"{value:.3f}"


def describe(
    label: str, ratio: Ratio, target: float | None = None, higher_is_better: bool = True
) -> str:
    """Both figures and the spread when known, without a verdict (for ratios with no target)."""
    medians = _figure(ratio.of_medians, target, higher_is_better)
    rounds = _figure(ratio.median_of_rounds, target, higher_is_better)
    spread = ""
    if math.isfinite(ratio.low) and math.isfinite(ratio.high):
        spread = f", {ratio.low:.2f}-{ratio.high:.2f}"
    return (
        f"{label}: {medians}x ratio of medians, {rounds}x median of {ratio.rounds} per-round "
        f"ratios{spread}"
    )


def headline(
    label: str,
    ratio: Ratio,
    target: float,
    higher_is_better: bool = True,
    min_rounds: int = MIN_ROUNDS,
) -> str:
    """One line: both figures, the spread when known, the target and the verdict."""
    sign = ">=" if higher_is_better else "<="
    result = verdict(ratio, target, higher_is_better, min_rounds)
    text = describe(label, ratio, target, higher_is_better)
    return f"{text}; target {sign} {target:g}x: {result}"
