"""The OpenAI API's error body, shared by every herd server that speaks that API."""

from __future__ import annotations

from typing import Any


def error_body(message: str, type: str, code: str | None = None) -> dict[str, Any]:
    """{"error": {...}}, as the OpenAI API and its clients expect it."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}
