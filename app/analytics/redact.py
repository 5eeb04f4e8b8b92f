"""Redaction of personal data in exported text: emails, phone numbers, card-like numbers."""

from __future__ import annotations

import re
from typing import Any

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes: payment card numbers and the like.
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# Digit groups joined by single spaces, dots or dashes, optionally led by +CC or (area):
# counted as a phone number when it holds 9 to 15 digits (so dates and versions stay).
PHONE = re.compile(
    r"(?<![\w+.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{1,4}){1,5}"
    r"(?![\w-])"
)
IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _phone(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(c.isdigit() for c in found)
    if not 9 <= digits <= 15 or IPV4.fullmatch(found):
        return found
    return "[PHONE]"


def redact_text(text: str) -> str:
    """text with emails, card-like numbers and phone numbers replaced by placeholders."""
    text = EMAIL.sub("[EMAIL]", text)
    text = CARD.sub("[CARD]", text)
    return PHONE.sub(_phone, text)


def redact_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages with their text content redacted (other fields kept)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            message = {**message, "content": redact_text(content)}
        elif isinstance(content, list):
            message = {
                **message,
                "content": [
                    {**part, "text": redact_text(part["text"])}
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                    else part
                    for part in content
                ],
            }
        out.append(message)
    return out
