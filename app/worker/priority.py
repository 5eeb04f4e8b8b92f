"""The X-Herd-Priority request header: the priority class a call runs in on this worker.

The gateway sends `X-Herd-Priority: batch` with every line of a batch; clients calling a
worker directly may send it too. Absent (or empty) means interactive; a value that names no
class is refused, since silently running a batch at live priority would hurt live traffic.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.engine.requests import PRIORITIES, Priority
from app.openai_api.errors import ApiError
from app.openai_api.headers import PRIORITY_HEADER

__all__ = ["PRIORITY_HEADER", "request_priority"]


def request_priority(headers: Mapping[str, str]) -> Priority:
    """The class named by the header (case and spaces ignored); 400 naming it otherwise."""
    raw = headers.get(PRIORITY_HEADER.lower(), headers.get(PRIORITY_HEADER, ""))
    value = raw.strip().lower()
    if not value:
        return "interactive"
    if value not in PRIORITIES:
        raise ApiError(
            400,
            f"{PRIORITY_HEADER}: {raw[:64]!r} is not a priority class; send one of "
            f"{', '.join(PRIORITIES)} (or leave the header out for interactive)",
            code="invalid_value",
            param=PRIORITY_HEADER,
        )
    return value
