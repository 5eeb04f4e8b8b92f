"""The batch input format: one JSON request per line, checked line by line.

A line is `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body":
{...}}`. Every problem is reported with its line number; a file with any problem is refused
whole, so a batch never starts on half a file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.openai_api.text import bad_text_at

# The endpoints a batch line may call, as OpenAI names them.
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 512
# Errors listed in one answer; the rest are counted.
MAX_LISTED_ERRORS = 50


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        # Line 0: the file as a whole (empty).
        return f"line {self.line}: {self.message}" if self.line else self.message


class FileInvalid(ValueError):
    """The file cannot be a batch's input; `errors` name each line at fault."""

    def __init__(self, errors: list[LineError]) -> None:
        self.errors = errors
        listed = "; ".join(str(e) for e in errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(
            f"the file is not valid batch input ({len(errors)} errors): {listed}{suffix}"
        )


@dataclass(frozen=True)
class BatchLine:
    """One valid line: its 1-based line number in the file, and the request."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


def _check(number: int, text: str) -> tuple[BatchLine | None, str | None]:
    """The line as a request, or why it is not one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    except RecursionError:
        return None, "not valid JSON (nested too deep)"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    # A NUL or a lone surrogate (JSON may escape both) is text PostgreSQL cannot store:
    # refused here, naming the line and the field, not when the batch is created or run.
    bad = bad_text_at(value)
    if bad is not None:
        return None, bad
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        return None, "custom_id must be a non-empty string"
    if len(custom_id) > MAX_CUSTOM_ID:
        return None, f"custom_id is longer than {MAX_CUSTOM_ID} characters"
    url = value.get("url")
    if url not in ENDPOINTS:
        return None, f"unknown endpoint {url!r}; a batch line calls one of {', '.join(ENDPOINTS)}"
    method = value.get("method")
    if method != "POST":
        return None, f"method {method!r} does not match url {url}: it takes POST"
    body = value.get("body")
    if not isinstance(body, dict):
        return None, "body must be a JSON object (the request to send)"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return None, "body.model must name a model alias"
    if body.get("stream"):
        return None, "body.stream is not supported in a batch"
    return BatchLine(number, custom_id, url, body), None


def read_lines(path: Path) -> Iterator[BatchLine]:
    """The requests of a file already checked by `validate` (blank lines skipped). A line
    that no longer passes (a file uploaded before a check was added) raises FileInvalid
    naming it: never a line silently left out of the batch."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            line, problem = _check(number, text)
            if line is None:
                raise FileInvalid([LineError(number, problem or "invalid")])
            yield line


def validate(path: Path) -> int:
    """Check every line of path; the number of requests. Raises FileInvalid listing each bad
    line (bad JSON, unknown endpoint, method not POST, repeated custom_id, ...) or an empty
    file."""
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                errors.append(LineError(number, f"not UTF-8 ({exc})"))
                continue
            if not text:
                continue
            line, problem = _check(number, text)
            if line is None:
                errors.append(LineError(number, problem or "invalid"))
                continue
            first = seen.setdefault(line.custom_id, number)
            if first != number:
                errors.append(
                    LineError(number, f"custom_id {line.custom_id!r} repeats line {first}")
                )
                continue
            count += 1
    if errors:
        raise FileInvalid(errors)
    if count == 0:
        raise FileInvalid([LineError(0, "the file is empty: no request lines")])
    return count


def with_alias(data: bytes, alias: str) -> bytes:
    """The file with every line's body.model set to alias; lines that are not requests are
    kept as they are, for the upload's check to name them with their line numbers."""
    out = io.BytesIO()
    for raw in data.splitlines(keepends=True):
        try:
            line = json.loads(raw)
            line["body"]["model"] = alias
            out.write(json.dumps(line).encode() + b"\n")
        except (ValueError, TypeError, KeyError, IndexError):
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return out.getvalue()
