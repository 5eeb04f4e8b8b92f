"""Output and error files in OpenAI's batch format, one JSON line per request:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.

The output file holds the lines answered 200; the error file the lines answered otherwise
(`response` set, `error` null, as OpenAI writes them) and the lines never sent (cancelled,
expired, a url other than the batch's endpoint: `response` null, `error` set).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson


def _line_id(batch_id: str, line: int) -> str:
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line}"


def _line(batch_id: str, row: Any) -> bytes:
    response = None
    if row["status_code"] is not None:
        response = {
            "status_code": row["status_code"],
            "request_id": row["request_id"],
            "body": row["response"],
        }
    value = {
        "id": _line_id(batch_id, row["line"]),
        "custom_id": row["custom_id"],
        "response": response,
        "error": None if response is not None else row["error"],
    }
    return orjson.dumps(value) + b"\n"


def file_lines(batch_id: str, rows: Iterable[Any]) -> Iterator[bytes]:
    """The lines of an output or error file from `batch_requests` rows, in file order."""
    for row in rows:
        yield _line(batch_id, row)


def rendered_size(lines: list[bytes]) -> int:
    return sum(len(line) for line in lines)
