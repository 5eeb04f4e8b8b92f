"""Server-sent events as OpenAI streams them: `data: <compact JSON>`, a blank line, and
`data: [DONE]` at the end.

Events are bytes: the gateway relays the workers' bytes unchanged and Starlette sends bytes
as they are, so neither side encodes an event twice.
"""

from __future__ import annotations

import json
from typing import Any


def sse(data: dict[str, Any] | str | bytes) -> bytes:
    """One server-sent event carrying data: a dict as compact JSON, a str or bytes as they
    are (bytes: JSON already encoded, as the gateway re-encodes a relayed chunk)."""
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":"))
    payload = data.encode() if isinstance(data, str) else data
    return b"data: " + payload + b"\n\n"


SSE_DONE = sse("[DONE]")
