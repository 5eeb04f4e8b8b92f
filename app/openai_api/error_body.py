"""The OpenAI API's error body, shared by every herd server that speaks that API."""

from __future__ import annotations

from typing import Any


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """{"error": {...}}, as the OpenAI API and its clients expect it; param names the request
    field at fault (as OpenAI writes it: "messages.[0].content")."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
