"""The Pareto front of models on two measures: none of them is beaten on both."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(
    points: Sequence[tuple[float, float]], *, maximize_x: bool = False, maximize_y: bool = False
) -> list[int]:
    """Indexes of the points that no other point beats on both x and y (lower is better
    unless maximize_*). A point equal to another on both stays on the front."""
    sx = -1.0 if maximize_x else 1.0
    sy = -1.0 if maximize_y else 1.0
    front = []
    for i, (xi, yi) in enumerate(points):
        dominated = any(
            sx * xj <= sx * xi and sy * yj <= sy * yi and (xj, yj) != (xi, yi)
            for j, (xj, yj) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front
