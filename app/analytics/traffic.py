"""Traffic classes: what kind of caller a request row is from.

The request log derives the class from its own columns (revision 0019, a generated column):
a batch line is `batch`, demo traffic `synthetic`, everything else `live`. The rollups keep
every class apart, so any choice of classes is exact at every range.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class TrafficClass(StrEnum):
    """The classes a request row can be in."""

    LIVE = "live"  # end users and API clients: what every number is about by default
    BATCH = "batch"  # lines of a batch (OpenAI Batch API, distillation, augmentation)
    SYNTHETIC = "synthetic"  # `herd demo-traffic`


# What tiles, charts, signals and datasets count unless asked for more.
DEFAULT_CLASSES: tuple[TrafficClass, ...] = (TrafficClass.LIVE,)


class UnknownTrafficClass(ValueError):
    """A class name that is none of TrafficClass."""


def parse_classes(names: Iterable[str]) -> tuple[TrafficClass, ...]:
    """The classes named (comma lists allowed), live always first; raises
    UnknownTrafficClass naming the first unknown one."""
    picked = {TrafficClass.LIVE}
    for part in names:
        for name in part.split(","):
            name = name.strip().lower()
            if not name:
                continue
            try:
                picked.add(TrafficClass(name))
            except ValueError:
                known = ", ".join(c.value for c in TrafficClass)
                raise UnknownTrafficClass(
                    f"unknown traffic class {name!r} (known: {known})"
                ) from None
    return tuple(c for c in TrafficClass if c in picked)
