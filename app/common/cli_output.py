"""What the `herd` command and its sub-commands print: results to stdout, problems to stderr.

Its own module so that the sub-command modules (app/*/cli.py), which app/cli.py imports,
can use it without importing app/cli.py back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm


def echo(message: str) -> None:
    """A result line on stdout, flushed at once (progress bars share the terminal)."""
    print(message, flush=True)


def warn(message: str) -> None:
    """A problem on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def progress_bars(
    min_total: int, unit: str, label: str = "{}", unit_scale: bool = False
) -> Iterator[Callable[[str, int, int], None]]:
    """Progress updates (name, done, total) shown as one tqdm bar per name; work whose total
    is under min_total gets no bar (it would only flash). label formats the name."""
    bars: dict[str, tqdm[Any]] = {}

    def update(name: str, done: int, total: int) -> None:
        bar = bars.get(name)
        if bar is None:
            if total < min_total:
                return
            bar = bars[name] = tqdm(
                total=total, unit=unit, unit_scale=unit_scale, desc=label.format(name),
                leave=False,
            )  # fmt: skip
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def utc_time(value: str) -> datetime:
    """An ISO date or time from the command line (an argparse type); naive values are
    taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
