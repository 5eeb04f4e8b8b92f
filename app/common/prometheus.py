"""Prometheus text exposition, written by hand: number format, labels, histograms."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

Labels = tuple[tuple[str, str], ...]


def number(value: float) -> str:
    """A sample value as Prometheus writes it (+Inf, integers without a point)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def escape(text: str) -> str:
    """A label value, escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels_text(labels: Labels, extra: str = "") -> str:
    """{k="v",...} for a label set, or "" when there is none."""
    parts = [f'{k}="{escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Histogram:
    """A Prometheus histogram per label set: cumulative buckets, sum and count."""

    def __init__(self, buckets: Sequence[float], always: Iterable[Labels] = ()) -> None:
        self.bounds = tuple(sorted(buckets))
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}
        # Label sets written even before their first observation (zero counts).
        for labels in always:
            self._series(labels)

    def _series(self, labels: Labels) -> tuple[list[int], list[float]]:
        return self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))

    def observe(self, labels: Labels, value: float) -> None:
        counts, total = self._series(labels)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        total[0] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                running += count
                le = 'le="' + number(bound) + '"'
                out.append(f"{name}_bucket{labels_text(labels, le)} {running}")
            out.append(f"{name}_sum{labels_text(labels)} {number(total[0])}")
            out.append(f"{name}_count{labels_text(labels)} {running}")
        return out
