"""The supervisor's own error."""

from __future__ import annotations


class SupervisorError(RuntimeError):
    """The supervisor cannot run; the message says why."""
