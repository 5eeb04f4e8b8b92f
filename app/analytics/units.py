"""How a metric value reads, by its catalog unit: the same text on a tile, in `herd
metrics` and in a tile's help."""

from __future__ import annotations


def format_value(value: float | None, unit: str) -> str:
    """A tile's value, short enough for its tile: 870 ms, 3.17 s, 1.25M requests."""
    if value is None:
        return "-"
    if unit == "ms":
        if abs(value) < 1000:
            return f"{value:,.0f} ms"
        return f"{significant(value / 1000)} s"
    if unit == "rate":
        return f"{value:.1%}"
    if unit in ("per_s", "per_min"):
        return f"{value:,.1f}" if abs(value) < 10_000 else compact(value)
    return f"{value:,.0f}" if abs(value) < 100_000 else compact(value)


def significant(value: float) -> str:
    """value with three significant digits (at least the units): 3.17, 12.1, 1,234."""
    size = abs(value)
    decimals = 2 if size < 10 else 1 if size < 100 else 0
    return f"{value:,.{decimals}f}"


def compact(value: float) -> str:
    """A large count in thousands, millions or billions: 123k, 1.25M, 3.40B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{significant(value / scale)}{suffix}"
    return f"{value:,.0f}"


def format_exact(value: float | None, unit: str) -> str:
    """A tile's value in full, for its help when the tile shows it rounded."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.0f} ms"
    if unit == "rate":
        return f"{value:.2%}"
    return f"{value:,.1f}" if unit in ("per_s", "per_min") else f"{value:,.0f}"
