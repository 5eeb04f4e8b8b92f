"""What the `herd` command and its sub-commands print: results to stdout, problems to stderr.

Its own module so that the sub-command modules (app/*/cli.py), which app/cli.py imports,
can use it without importing app/cli.py back.
"""

from __future__ import annotations

import sys


def echo(message: str) -> None:
    """A result line on stdout, flushed at once (progress bars share the terminal)."""
    print(message, flush=True)


def warn(message: str) -> None:
    """A problem on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)
